"""Updates at piece granularity (issue 18): a pull that holds an older version
fetches only the bytes it lacks, over real sockets, and never writes a byte
the signed manifest does not vouch for."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.home import Home
from p2pckpt.publish import publish
from p2pckpt.transfer import chunk_serve
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.pull import PullResult, pull
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import encode

LOCAL = "127.0.0.1"
MIB = 1 << 20


def _homes(tmp_path: Path) -> tuple[Home, Home]:
    seeder, _ = Home.init(tmp_path / "seeder")
    puller, _ = Home.init(tmp_path / "puller")
    seeder.trust.add(puller.key.peer_id, "puller", ["pull"])
    puller.trust.add(seeder.key.peer_id, "seeder", ["pull", "publish"])
    return seeder, puller


def _edit(data: bytes, seed: int) -> tuple[bytes, int]:
    """Four 256 KiB regions rewritten at odd offsets and eight insertions of
    1-100 bytes: returns the new bytes and how many bytes are new."""
    rng = random.Random(seed)
    out = bytearray(data)
    changed = 0
    for _ in range(4):
        at = rng.randrange(0, len(out) - (256 << 10))
        out[at : at + (256 << 10)] = rng.randbytes(256 << 10)
        changed += 256 << 10
    for _ in range(8):
        at = rng.randrange(0, len(out))
        n = rng.randrange(1, 101)
        out[at:at] = rng.randbytes(n)
        changed += n
    return bytes(out), changed


@asynccontextmanager
async def _serving(seeder: Home) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(Server(seeder).serve, LOCAL, 0)
        yield listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def _pull(seeder: Home, puller: Home, port: int, version: int, dest: Path) -> PullResult:
    conn = await connect_direct(puller, (LOCAL, port), expect=seeder.key.peer_id)
    return await pull(puller, [conn], "model", version, dest, streams=1)


def _published(tmp_path: Path) -> tuple[Home, Home, bytes, Path]:
    """Two homes, and 24 MiB of random bytes published as model@1: (seeder,
    puller, the bytes, where the puller's copy goes)."""
    seeder, puller = _homes(tmp_path)
    v1 = os.urandom(24 * MIB)
    f = tmp_path / "model.bin"
    f.write_bytes(v1)
    publish(seeder, f, "model", version=1)
    return seeder, puller, v1, tmp_path / "got.bin"


async def _update(tmp_path: Path, edit: Callable[[bytes], bytes]) -> tuple[PullResult, bytes]:
    """Version 1 pulled into DEST, then version 2 (``edit`` of it) pulled over it."""
    seeder, puller, v1, dest = _published(tmp_path)
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            first = await _pull(seeder, puller, port, 1, dest)
            assert first.bytes_downloaded == len(v1)
            v2 = edit(v1)
            f2 = tmp_path / "v2" / "model.bin"
            f2.parent.mkdir()
            f2.write_bytes(v2)
            publish(seeder, f2, "model", version=2)
            second = await _pull(seeder, puller, port, 2, dest)
    assert dest.read_bytes() == v2
    return second, v2


async def test_a_shifted_file_costs_about_the_bytes_that_changed(tmp_path: Path) -> None:
    """Insertions shift every later byte, so no fixed-offset chunk after the
    first one matches whole; pieces still match, and the update fetches
    little more than what changed (was every chunk after the first edit)."""
    changed = 0

    def edit(data: bytes) -> bytes:
        nonlocal changed
        out, changed = _edit(data, 1)
        return out

    result, v2 = await _update(tmp_path, edit)
    assert result.bytes_reused + result.bytes_downloaded == len(v2)
    assert result.bytes_downloaded < changed + 2 * MIB // 4, (result.bytes_downloaded, changed)


async def test_a_lying_piece_list_costs_a_whole_chunk_never_a_wrong_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeder whose piece lists name local pieces in the wrong places: the
    assembled chunks fail their hash, and the swarm fetches them whole."""
    from p2pckpt.manifest import pieces as pieces_mod

    real = chunk_serve.read_pieces

    def lying(path: Path, chunk: object) -> list[pieces_mod.Piece]:
        listed = real(path, chunk)  # type: ignore[arg-type]
        digests = [p.digest for p in listed]
        random.Random(0).shuffle(digests)
        return [
            pieces_mod.Piece(p.start, p.length, d) for p, d in zip(listed, digests, strict=True)
        ]

    monkeypatch.setattr(chunk_serve, "read_pieces", lying)
    result, v2 = await _update(tmp_path, lambda data: _edit(data, 2)[0])
    assert result.bytes_reused + result.bytes_downloaded == len(v2)
    assert result.bytes_downloaded > 16 * MIB  # the shifted chunks, fetched whole


async def test_a_cold_pull_asks_for_no_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing local to match: not one PiecesRequest is sent."""
    asked: list[m.Message] = []
    real = chunk_serve.Chunks.pieces_or_ranges

    async def spy(
        self: chunk_serve.Chunks, req: m.PiecesRequest | m.RangeRequest
    ) -> bytes | memoryview:
        asked.append(req)
        return await real(self, req)

    monkeypatch.setattr(chunk_serve.Chunks, "pieces_or_ranges", spy)
    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(9 * MIB))
    publish(seeder, f, "model", version=1)
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            result = await _pull(seeder, puller, port, 1, tmp_path / "got.bin")
    assert result.bytes_downloaded == 9 * MIB and asked == []


async def test_bad_piece_and_range_requests_get_errors_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    """Past the chunk, no such chunk, an unknown version: one Error each, by
    req_id; the same connection then gets a good answer."""
    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(5 * MIB))  # chunks of 4 MiB and 1 MiB
    root = publish(seeder, f, "model", version=1).root
    with trio.fail_after(30):
        async with _serving(seeder) as port:
            conn = await connect_direct(puller, (LOCAL, port), expect=seeder.key.peer_id)
            for req, code in [
                (m.RangeRequest(1, root, 1, ((MIB - 10, 11),)), m.BAD_REQUEST),
                (m.RangeRequest(2, root, 2, ((0, 1),)), m.BAD_REQUEST),
                (m.PiecesRequest(3, root, 2), m.BAD_REQUEST),
                (m.PiecesRequest(4, bytes(32), 0), m.NOT_FOUND),
            ]:
                reply = await conn.request(req)
                assert isinstance(reply, m.Error) and (reply.code, reply.req_id) == (
                    code,
                    req.req_id,
                )
            pieces = await conn.request(m.PiecesRequest(5, root, 1))
            assert isinstance(pieces, m.PieceList) and pieces.req_id == 5
            # They tile the chunk: the last piece of the file ends it.
            assert pieces.pieces[0][0] <= 0
            assert pieces.pieces[-1][0] + pieces.pieces[-1][1] == MIB
            data = f.read_bytes()
            got = await conn.request(m.RangeRequest(6, root, 1, ((0, 10), (MIB - 5, 5))))
            assert got == m.ChunkData(6, data[4 * MIB : 4 * MIB + 10] + data[-5:])
            await conn.aclose()


async def test_a_file_changed_after_publishing_gives_no_pieces_or_ranges(tmp_path: Path) -> None:
    """The chunk is checked before any piece or range of it leaves (R-31)."""
    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(MIB))
    root = publish(seeder, f, "model", version=1).root
    fd = os.open(f, os.O_RDWR)
    os.pwrite(fd, bytes([os.pread(fd, 1, 0)[0] ^ 0xFF]), 0)  # one byte, surely different
    os.close(fd)
    with trio.fail_after(30):
        async with _serving(seeder) as port:
            conn = await connect_direct(puller, (LOCAL, port), expect=seeder.key.peer_id)
            for req in (m.PiecesRequest(1, root, 0), m.RangeRequest(2, root, 0, ((5, 5),))):
                reply = await conn.request(req)
                assert isinstance(reply, m.Error) and reply.code == m.SOURCE_CHANGED
            await conn.aclose()


async def test_a_source_that_drops_the_piece_step_leaves_the_pull_to_whole_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an older peer does on a request it does not know: the connection
    closes mid-step. The chunks assembled so far stay; the rest come whole."""
    calls = 0
    real = chunk_serve.Chunks.pieces_or_ranges

    async def flaky(
        self: chunk_serve.Chunks, req: m.PiecesRequest | m.RangeRequest
    ) -> bytes | memoryview:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RemoteProtocolError("unexpected message type 15")
        return await real(self, req)

    monkeypatch.setattr(chunk_serve.Chunks, "pieces_or_ranges", flaky)
    result, v2 = await _update(tmp_path, lambda data: _edit(data, 3)[0])
    assert result.bytes_reused + result.bytes_downloaded == len(v2)
    assert calls >= 4


async def test_a_partial_copy_of_the_previous_version_is_reused_not_deleted(
    tmp_path: Path,
) -> None:
    """A pull of version 1 stopped half-way, then a pull of version 2 to the
    same DEST: what version 1's partial copy verified is taken from it (was:
    deleted, and fetched again); the kept copy is gone afterwards."""
    from p2pckpt.store.staging import Staging, staging_path

    seeder, puller, v1, dest = _published(tmp_path)
    f = tmp_path / "model.bin"
    entry = seeder.catalog.find("model", 1)
    assert entry is not None
    half = Staging(dest, entry.manifest(), entry.envelope)  # a pull of v1, stopped after 3 chunks
    half.open()
    for i in range(3):
        half.write_chunk(i, v1[i * 4 * MIB : (i + 1) * 4 * MIB])
    half.sync()
    half.close()
    v2 = bytearray(v1)
    v2[-MIB:] = os.urandom(MIB)  # only the last chunk differs
    f.write_bytes(v2)
    publish(seeder, f, "model", version=2)
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            result = await _pull(seeder, puller, port, 2, dest)
    assert dest.read_bytes() == v2
    assert result.bytes_reused == 12 * MIB  # the three chunks the stopped pull verified
    assert result.bytes_downloaded == 12 * MIB
    assert not await trio.Path(staging_path(dest)).exists()  # the kept copy went too


async def test_range_answers_are_capped_like_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer cannot get round the upload cap by asking for a chunk as ranges:
    the answer goes through the server's and the peer's throttles."""
    from p2pckpt.transfer.throttle import Throttle

    taken: list[int] = []
    real = Throttle.take

    async def counting(self: Throttle, n: int) -> None:
        taken.append(n)
        await real(self, n)

    monkeypatch.setattr(Throttle, "take", counting)
    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(4 * MIB))
    root = publish(seeder, f, "model", version=1).root
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = Server(seeder, upload=1 << 30, per_peer=1 << 30)
            (listener,) = await nursery.start(server.serve, LOCAL, 0)
            port = listener.socket.getsockname()[1]
            conn = await connect_direct(puller, (LOCAL, port), expect=seeder.key.peer_id)
            ranges = ((0, 2 * MIB), (2 * MIB, MIB))
            got = await conn.request(m.RangeRequest(1, root, 0, ranges))
            assert isinstance(got, m.ChunkData) and len(got.data) == 3 * MIB
            assert sum(taken) == 2 * len(encode(got))  # both caps, a slice at a time
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_source_that_never_answers_the_piece_step_costs_one_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeder stuck on a piece list: the step gives up after ANSWER_TIMEOUT
    (shortened here) and the pull finishes with whole chunks."""
    from p2pckpt.transfer import delta

    async def stuck(self: chunk_serve.Chunks, req: m.PiecesRequest | m.RangeRequest) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(delta, "ANSWER_TIMEOUT", 0.5)
    monkeypatch.setattr(chunk_serve.Chunks, "pieces_or_ranges", stuck)
    result, v2 = await _update(tmp_path, lambda data: _edit(data, 4)[0])
    assert result.bytes_reused + result.bytes_downloaded == len(v2)
