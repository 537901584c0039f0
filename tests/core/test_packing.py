"""Tests for p2pckpt.wire.packing: byte grouping, codec round trips, and unpacking
that refuses anything but exactly the chunk's bytes (bombs included)."""

from __future__ import annotations

import math
import os
import random
import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.wire import packing
from p2pckpt.wire.packing import (
    CODECS,
    ZSTD,
    ZSTD_BYTES2,
    ZSTD_BYTES4,
    group,
    pack,
    ungroup,
    unpack,
)

PROPERTY = settings(max_examples=200, database=None, deadline=None)


def weights(n: int, width: int, seed: int = 0) -> bytes:
    """``n`` bytes of little-endian bf16 (width 2) or fp32 (width 4) values
    drawn from N(0, 0.02), like a trained layer's weights."""
    rng = random.Random(seed)
    words = [struct.pack("<f", rng.gauss(0.0, 0.02)) for _ in range(n // width + 1)]
    if width == 2:
        return b"".join(w[2:] for w in words)[:n]  # bf16: the high half of fp32
    return b"".join(words)[:n]


def test_group_known_layout() -> None:
    """Byte i of every word, for each i in turn, then the tail as is."""
    assert group(b"aAbBcC", 2) == b"abcABC"
    assert group(b"0123456789", 4) == b"04" + b"15" + b"26" + b"37" + b"89"
    assert group(b"xyz", 4) == b"xyz"  # shorter than a word: all tail
    assert group(b"", 2) == b""


@PROPERTY
@given(data=st.binary(max_size=300), width=st.sampled_from([1, 2, 4]))
def test_ungroup_inverts_group(data: bytes, width: int) -> None:
    """Any length, odd or not: ungrouping the grouped bytes gives them back."""
    grouped = group(data, width)
    assert len(grouped) == len(data) and sorted(grouped) == sorted(data)
    out = bytearray(len(data))
    ungroup(grouped, width, out)
    assert bytes(out) == data


@PROPERTY
@given(data=st.binary(min_size=1, max_size=2000), codec=st.sampled_from(CODECS))
def test_pack_unpack_round_trip(data: bytes, codec: int) -> None:
    """What packs smaller unpacks to the same bytes; what does not is refused
    (a packed chunk is never sent unless it is smaller)."""
    packed = pack(codec, memoryview(data))
    out = bytearray(len(data))
    if len(packed) < len(data):
        unpack(codec, packed, out)
        assert bytes(out) == data
    else:
        with pytest.raises(RemoteProtocolError, match="bytes packed for a chunk"):
            unpack(codec, packed, out)


@pytest.mark.parametrize(
    ("kind", "codec", "at_most"),
    [
        ("bf16", ZSTD_BYTES2, 0.75),
        ("bf16", ZSTD, 0.85),
        ("fp32", ZSTD_BYTES4, 0.9),
        ("zeros", ZSTD, 0.01),
    ],
)
def test_weights_pack_smaller(kind: str, codec: int, at_most: float) -> None:
    """Weight-like tensors shrink (grouping helps floats), and odd lengths survive."""
    n = (1 << 18) + 3
    data = {"bf16": weights(n, 2), "fp32": weights(n, 4), "zeros": bytes(n)}[kind]
    packed = pack(codec, data)
    assert len(packed) < at_most * n
    out = bytearray(n)
    unpack(codec, packed, out)
    assert out == data


def test_random_bytes_do_not_shrink() -> None:
    data = os.urandom(1 << 18)
    for codec in CODECS:
        assert len(pack(codec, data)) >= len(data)


# --- hostile packed bodies ----------------------------------------------------------

CHUNK = 100_000
DATA = weights(CHUNK, 2, seed=3)


def _with_declared_size(frame: bytes, size: int) -> bytes:
    """``frame`` with its header's content size field rewritten to ``size``
    (same field width), so the header lies about what the frame holds."""
    fhd = frame[4]
    fcs_flag, single, did_flag = fhd >> 6, fhd >> 5 & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    value = size - 256 if width == 2 else size
    field = value.to_bytes(width, "little")
    return frame[:pos] + field + frame[pos + width :]


def test_lying_header_helper_is_honest_about_itself() -> None:
    frame = pack(ZSTD, DATA)
    assert zstandard.frame_content_size(_with_declared_size(frame, CHUNK - 7)) == CHUNK - 7


@pytest.mark.parametrize(
    ("name", "codec", "body"),
    [
        ("unknown-codec-0", 0, pack(ZSTD, DATA)),
        ("unknown-codec-4", 4, pack(ZSTD, DATA)),
        ("longer", ZSTD, pack(ZSTD, DATA + b"x" * 10)),
        ("shorter", ZSTD, pack(ZSTD, DATA[:-10])),
        ("longer-grouped", ZSTD_BYTES2, pack(ZSTD_BYTES2, DATA + b"xy")),
        (
            "header-says-chunk-frame-holds-more",
            ZSTD,
            _with_declared_size(pack(ZSTD, DATA + bytes(999)), CHUNK),
        ),
        (
            "header-says-chunk-frame-holds-less",
            ZSTD,
            _with_declared_size(pack(ZSTD, DATA[:-999]), CHUNK),
        ),
        ("truncated", ZSTD, pack(ZSTD, DATA)[:-1]),
        ("cut-in-header", ZSTD, pack(ZSTD, DATA)[:3]),
        ("trailing-bytes", ZSTD, pack(ZSTD, DATA) + b"\0"),
        ("two-frames", ZSTD, pack(ZSTD, DATA[:50_000]) + pack(ZSTD, DATA[50_000:])),
        ("not-zstd", ZSTD, b"\x00" * 100),
        ("empty", ZSTD, b""),
        (
            "no-content-size",
            ZSTD,
            zstandard.ZstdCompressor(write_content_size=False).compress(DATA),
        ),
        ("skippable", ZSTD, b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"abcd"),
        ("bit-flip", ZSTD, bytes([pack(ZSTD, DATA)[0] ^ 1]) + pack(ZSTD, DATA)[1:]),
    ],
)
def test_malformed_packed_bodies_refused(name: str, codec: int, body: bytes) -> None:
    """Anything but one well-formed frame of exactly the chunk's length is a
    RemoteProtocolError (never a zstd exception, never a wrong-size result)."""
    with pytest.raises(RemoteProtocolError, match="bad packed chunk"):
        unpack(codec, body, bytearray(CHUNK))


def test_corrupt_payload_with_right_size_is_left_to_the_hash() -> None:
    """A frame that decodes to the right length but wrong bytes passes unpack
    (it is the BLAKE3 check after it that refuses the chunk)."""
    other = bytearray(DATA)
    other[5] ^= 0xFF
    out = bytearray(CHUNK)
    unpack(ZSTD, pack(ZSTD, bytes(other)), out)
    assert out == other != DATA


def test_decompression_bomb_allocates_nothing_big() -> None:
    """A few KiB that would inflate to 256 MiB are refused from the frame header:
    the chunk's buffer is all the memory unpacking may ever fill."""
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    assert len(bomb) < 64 << 10
    lying = _with_declared_size(bomb, CHUNK)  # claims the chunk's size, holds 256 MiB
    for body in (bomb, lying):
        tracemalloc.start()
        try:
            with pytest.raises(RemoteProtocolError, match="bad packed chunk"):
                unpack(ZSTD, body, bytearray(CHUNK))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * CHUNK, peak


def test_available_and_mask() -> None:
    assert packing.available() == packing.mask(CODECS) == 0b1110
    assert math.log2(packing.mask([ZSTD_BYTES4])) == ZSTD_BYTES4


def test_zstandard_is_loaded_only_when_a_chunk_is_packed() -> None:
    """Importing the package, the CLI, the seeder or the puller does not load zstandard."""
    import subprocess
    import sys

    probe = (
        "import sys, p2pckpt, p2pckpt.cli.main, p2pckpt.transfer.serve, p2pckpt.transfer.pull;"
        "print('zstandard' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
