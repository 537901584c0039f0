"""Chunk packing end to end (issue 7), against real `serve` and `pull` processes:
a seeder whose upload is capped packs weight-like chunks, so fewer bytes cross
the wire than the checkpoint holds; random bytes go raw; `compress = "off"`
sends everything raw."""

from __future__ import annotations

import json
import os
import random
import statistics
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from p2pckpt.store import journal
from p2pckpt.store.staging import staging_path
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import packed_header
from p2pckpt.wire.packing import ZSTD, ZSTD_BYTES2, pack
from tests.e2e.nodes import Pair, run_json
from tests.e2e.test_security import (
    SMALL_CHUNK,
    EvilSeeder,
    arun,
    assert_refused,
    new_key,
    signed_file,
)

TENSOR = 1 << 20  # bf16 tensors of 1 MiB: one chunk each (safetensors cuts at tensors)


def bf16_weights(values: int, seed: int) -> bytes:
    """Little-endian bf16 values shaped like N(0, 0.02) weights, at C speed
    without numpy: each high byte (sign, 7 exponent bits) is drawn from the
    distribution's 256 quantiles, each low byte (mostly mantissa) uniformly."""
    rng = random.Random(seed)
    dist = statistics.NormalDist(0.0, 0.02)
    table = bytes(struct.pack(">f", dist.inv_cdf((i + 0.5) / 256))[0] for i in range(256))
    out = bytearray(2 * values)
    out[1::2] = rng.randbytes(values).translate(table)
    out[0::2] = rng.randbytes(values)
    return bytes(out)


def safetensors(path: Path, count: int, seed: int = 1) -> int:
    """A safetensors file of ``count`` bf16 tensors of TENSOR bytes; returns its size."""
    header = {
        f"layer.{i}.weight": {
            "dtype": "BF16",
            "shape": [TENSOR // 2],
            "data_offsets": [i * TENSOR, (i + 1) * TENSOR],
        }
        for i in range(count)
    }
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    data = b"".join(bf16_weights(TENSOR // 2, seed + i) for i in range(count))
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path.stat().st_size


def _capped(pair: Pair, rate: int, compress: str = "auto") -> None:
    (pair.a / "config.toml").write_text(
        f"[discovery]\nmdns = false\n[limits]\nupload = {rate}\n"
        f'[transfer]\ncompress = "{compress}"\n'
    )


def test_capped_seeder_packs_weights_and_sends_random_bytes_raw(pair: Pair, tmp_path: Path) -> None:
    """At 8 MB/s, packing bf16 chunks pays: the pull is verified with well
    under the checkpoint's size on the wire. Random bytes never shrink, so
    they go raw (wire bytes = chunk bytes)."""
    weights = tmp_path / "model.safetensors"
    size = safetensors(weights, 24)
    noise = tmp_path / "optimizer.bin"
    noise.write_bytes(os.urandom(6 << 20))
    run_json(pair.a, "publish", str(weights), "--name", "w", "--version", "1")
    run_json(pair.a, "publish", str(noise), "--name", "r", "--version", "1")
    _capped(pair, 8_000_000)
    server = pair.serve_a()

    got = tmp_path / "got.safetensors"
    doc = run_json(pair.b, "pull", "w", "--from", server.addr, "-o", str(got), "--streams", "1")
    assert got.read_bytes() == weights.read_bytes()
    assert doc["bytes_downloaded"] == doc["bytes_total"] == size
    assert doc["bytes_wire"] < 0.9 * size, doc["bytes_wire"] / size
    (peer,) = doc["peers"]
    assert peer["wire"] == doc["bytes_wire"] and peer["bytes"] == size

    doc = run_json(pair.b, "pull", "r", "--from", server.addr, "-o", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == noise.read_bytes()
    assert doc["bytes_wire"] == doc["bytes_downloaded"] == 6 << 20

    log = server.stop()
    packed = [line for line in log.splitlines() if "packed chunks peer=" in line]
    assert len(packed) == 1, log  # the weights' connection only
    fields = dict(f.split("=") for f in packed[0].split("packed chunks ")[1].split())
    assert int(fields["chunk_bytes"]) == size
    assert int(fields["wire_bytes"]) < 0.9 * size
    assert 0 < int(fields["packed"]) < int(fields["chunks"])  # the first chunks went raw


def test_compress_off_sends_raw(pair: Pair, tmp_path: Path) -> None:
    """`[transfer] compress = "off"` on the seeder: the same weights go raw."""
    weights = tmp_path / "model.safetensors"
    size = safetensors(weights, 8, seed=7)
    run_json(pair.a, "publish", str(weights), "--name", "w", "--version", "1")
    _capped(pair, 8_000_000, compress="off")
    server = pair.serve_a()
    got = tmp_path / "got.safetensors"
    doc = run_json(pair.b, "pull", "w", "--from", server.addr, "-o", str(got), "--streams", "1")
    assert got.read_bytes() == weights.read_bytes()
    assert doc["bytes_wire"] == doc["bytes_downloaded"] == size
    assert "packed chunks" not in server.stop()


# -- a trusted seeder that packs dishonestly ---------------------------------------------


@pytest.fixture
async def evil(pair: Pair, tmp_path: Path) -> AsyncIterator[EvilSeeder]:
    """A scripted seeder in this process whose key B trusts for every role."""
    key = new_key(tmp_path / "M")
    await arun(
        pair.b,
        "trust",
        "add",
        str(key.peer_id),
        "--name",
        "m",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    seeder = EvilSeeder(key)
    async with trio.open_nursery() as nursery:
        await seeder.start(nursery)
        yield seeder
        nursery.cancel_scope.cancel()


BAD = 2  # the chunk index answered with a hostile packed body


def _bomb(req: m.ChunkRequest, piece: bytes) -> bytes:
    """A frame of 64 MiB of zeros (a few KiB packed) for a 64 KiB chunk."""
    bomb = pack(ZSTD, bytes(64 << 20))
    return packed_header(req.req_id, ZSTD, len(bomb)) + bomb


def _lying(req: m.ChunkRequest, piece: bytes) -> bytes:
    """Declares the chunk's length, holds more."""
    body = pack(ZSTD, piece + bytes(5000))
    fhd = body[4]  # frame header descriptor: where the content size sits, and its width
    pos = 5 + (0 if fhd >> 5 & 1 else 1) + (0, 1, 2, 4)[fhd & 3]
    width = (1 if fhd >> 5 & 1 else 0, 2, 4, 8)[fhd >> 6]
    size = len(piece) - (256 if width == 2 else 0)
    body = body[:pos] + size.to_bytes(width, "little") + body[pos + width :]
    return packed_header(req.req_id, ZSTD, len(body)) + body


def _unknown_codec(req: m.ChunkRequest, piece: bytes) -> bytes:
    body = pack(ZSTD, piece)
    return packed_header(req.req_id, 9, len(body)) + body


def _not_smaller(req: m.ChunkRequest, piece: bytes) -> bytes:
    body = pack(ZSTD, piece) + bytes(len(piece))
    return packed_header(req.req_id, ZSTD, len(body)) + body


def _wrong_bytes(req: m.ChunkRequest, piece: bytes) -> bytes:
    bad = bytearray(piece)
    bad[100] ^= 0xFF
    body = pack(ZSTD_BYTES2, bytes(bad))
    return packed_header(req.req_id, ZSTD_BYTES2, len(body)) + body


@pytest.mark.parametrize(
    ("reply", "code", "needle"),
    [
        (_bomb, 6, "bad packed chunk: frame declares 67108864 bytes"),
        (_lying, 6, "bad packed chunk: zstd"),
        (_unknown_codec, 6, "unknown chunk codec 9"),
        (_not_smaller, 6, "into no fewer bytes than the chunk"),
        (_wrong_bytes, 9, f"chunk {BAD}"),
    ],
    ids=["bomb", "lying-size", "unknown-codec", "not-smaller", "wrong-bytes"],
)
async def test_hostile_packed_chunk_is_refused(
    pair: Pair,
    evil: EvilSeeder,
    tmp_path: Path,
    reply: Callable[[m.ChunkRequest, bytes], bytes],
    code: int,
    needle: str,
) -> None:
    """A bomb, a lying frame, an unknown codec, a "packed" chunk no smaller than
    the chunk, or packed wrong bytes: the pull fails cleanly (the one source is
    out), the chunk is never journaled, and the pull resumes from an honest one."""
    data = bf16_weights(4 * SMALL_CHUNK, seed=5)  # 8 chunks of 64 KiB
    manifest, envelope, pieces = signed_file(evil.key, "evil-ft", data)

    def hostile(req: m.ChunkRequest) -> bytes:
        assert req.accept == 0b1110  # the puller offers every codec it has
        if req.index == BAD:
            return reply(req, pieces[req.index])
        return evil.honest_chunk(req)

    evil.offer(envelope, pieces, chunk_reply=hostile)
    dest = tmp_path / "out" / "model.safetensors"
    args = ("pull", "evil-ft", "--from", evil.addr, "-o", str(dest), "--streams", "1")
    proc = await arun(pair.b, *args)
    assert_refused(proc, code, needle)
    assert not dest.exists()
    partial = staging_path(dest)
    done = journal.parse((partial / "journal").read_bytes(), manifest.root, len(pieces))
    assert BAD not in done

    def packed(req: m.ChunkRequest) -> bytes:  # an honest seeder that packs everything
        body = pack(ZSTD_BYTES2, pieces[req.index])
        return packed_header(req.req_id, ZSTD_BYTES2, len(body)) + body

    evil.offer(envelope, pieces, chunk_reply=packed)
    proc = await arun(pair.b, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == data
    doc = json.loads(proc.stdout)
    assert doc["bytes_downloaded"] == len(data) - sum(len(pieces[i]) for i in done)
    assert doc["bytes_wire"] < 0.8 * doc["bytes_downloaded"]
