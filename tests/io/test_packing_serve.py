"""The seeder's side of chunk packing against a real Server over loopback:
who gets raw chunks (issue 7)."""

from __future__ import annotations

import random
import statistics
import struct
from pathlib import Path

import trio

from p2pckpt.home import Home
from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.publish import publish
from p2pckpt.transfer.peer import PeerConnection, connect_direct
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m
from p2pckpt.wire.packing import available, unpack


def _bf16(values: int) -> bytes:
    """Weight-like bf16 bytes (packing them would save about a third)."""
    rng = random.Random(3)
    dist = statistics.NormalDist(0.0, 0.02)
    table = bytes(struct.pack(">f", dist.inv_cdf((i + 0.5) / 256))[0] for i in range(256))
    out = bytearray(2 * values)
    out[1::2] = rng.randbytes(values).translate(table)
    out[0::2] = rng.randbytes(values)
    return bytes(out)


async def _answers(
    tmp_path: Path, accept: int, upload: int = 0, compress: bool = True
) -> list[type]:
    """Ask a loopback server for every chunk of a 24 MiB bf16 file twice
    over, pipelined; the types of the answers (each chunk checked)."""
    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    f = tmp_path / "w.bin"
    f.write_bytes(_bf16(12 << 20))
    manifest = publish(seeder, f, "w")
    server = Server(seeder, upload=upload, compress=compress)
    chunks = [c for _, _, c in manifest.iter_chunks()]
    kinds: list[type] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            conn: PeerConnection = await connect_direct(
                puller, ("127.0.0.1", port), expect=seeder.key.peer_id
            )
            indexes = list(range(manifest.chunk_count)) * 2
            for req_id, index in enumerate(indexes):
                await conn.send(m.ChunkRequest(req_id, manifest.root, index, accept))
            for req_id in range(len(indexes)):
                reply = await conn.receive()
                assert isinstance(reply, m.ChunkData | m.ChunkPacked)
                assert reply.req_id == req_id
                chunk = chunks[indexes[req_id]]
                data = reply.data
                if isinstance(reply, m.ChunkPacked):
                    assert accept >> reply.codec & 1 and len(reply.data) < chunk.length
                    data = bytearray(chunk.length)
                    unpack(reply.codec, reply.data, data)
                assert chunk_hash(data) == chunk.digest
                kinds.append(type(reply))
            await conn.aclose()
            nursery.cancel_scope.cancel()
    return kinds


async def test_request_without_codecs_gets_raw_chunks(tmp_path: Path) -> None:
    """A 3-field ChunkRequest (a puller from before issue 7) gets ChunkData."""
    kinds = await _answers(tmp_path, 0)
    assert set(kinds) == {m.ChunkData}


async def test_loopback_peer_gets_raw_chunks_without_a_throttle(tmp_path: Path) -> None:
    """A peer on this machine, with no upload cap: packing cannot pay (the
    "link" is our CPU), so even compressible chunks go raw."""
    kinds = await _answers(tmp_path, available())
    assert set(kinds) == {m.ChunkData}


async def test_throttled_seeder_packs_unless_compress_is_off(tmp_path: Path) -> None:
    """Held to 30 MB/s by its upload cap, the seeder packs the later chunks
    (the first go raw while it measures); with compress off, none."""
    kinds = await _answers(tmp_path / "auto", available(), upload=30_000_000)
    assert kinds[0] is m.ChunkData and kinds.count(m.ChunkPacked) >= 4, kinds
    kinds = await _answers(tmp_path / "off", available(), upload=30_000_000, compress=False)
    assert set(kinds) == {m.ChunkData}
