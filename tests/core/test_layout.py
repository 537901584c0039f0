"""Tests for p2pckpt.manifest.layout: tensor-aligned chunks for safetensors."""

from __future__ import annotations

import itertools
import json
import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from p2pckpt.manifest.chunker import CHUNK_SIZE, chunk_hash
from p2pckpt.manifest.layout import MIN_SEGMENT, plan, safetensors_cuts

MIB = 1 << 20


def safetensors(tensors: list[tuple[str, bytes]], meta: str = "") -> bytes:
    """A real safetensors file: 8-byte length, JSON header, tensor data."""
    header: dict[str, object] = {"__metadata__": {"note": meta}}
    offset = 0
    for name, data in tensors:
        header[name] = {
            "dtype": "U8",
            "shape": [len(data)],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + b"".join(d for _, d in tensors)


def chunks(data: bytes) -> list[bytes]:
    """Chunk hashes as publish would compute them."""
    bounds = plan(
        len(data), safetensors_cuts(data[: 8 + struct.unpack("<Q", data[:8])[0]], len(data))
    )
    return [chunk_hash(data[o : o + n]) for o, n in bounds]


def model(seed: int = 1) -> list[tuple[str, bytes]]:
    """Big and small tensors mixed, as in a real checkpoint."""
    rng = random.Random(seed)
    sizes = [9 * MIB + 123, 40_000, 3_000, 700 * 1024, 2 * MIB, 5 * MIB + 7, 100, 3 * MIB]
    return [(f"layer.{i}", rng.randbytes(n)) for i, n in enumerate(sizes)]


def test_a_grown_header_changes_only_the_header_chunk() -> None:
    """37 more bytes of header move every tensor; every data chunk survives."""
    old = safetensors(model(), meta="step 1200")
    new = safetensors(model(), meta="step 1200" + "x" * 37)
    assert len(new) == len(old) + 37
    before, after = chunks(old), chunks(new)
    assert before[0] != after[0]  # the header itself changed
    assert before[1:] == after[1:]
    # the fixed 4 MiB plan would have kept none of them
    fixed = [chunk_hash(old[o : o + n]) for o, n in plan(len(old))]
    fixed_new = {chunk_hash(new[o : o + n]) for o, n in plan(len(new))}
    assert not set(fixed) & fixed_new


def test_a_tensor_changed_in_place_changes_only_its_chunks() -> None:
    tensors = model()
    old = safetensors(tensors)
    name, data = tensors[5]  # 5 MiB + 7: two chunks of its own
    tensors[5] = (name, bytes(len(data)))
    new = safetensors(tensors)
    before, after = chunks(old), chunks(new)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(changed) == 2


def test_small_tensors_share_chunks() -> None:
    """Runs of tensors smaller than MIN_SEGMENT are not cut one by one."""
    data = safetensors([(f"t{i}", bytes([i % 256]) * 1000) for i in range(500)])
    bounds = plan(len(data), safetensors_cuts(data, len(data)))
    assert len(bounds) == 2  # the header, then all 500 KB of data together


def test_not_safetensors_gets_fixed_chunks() -> None:
    for head in [
        b"",
        b"\x00" * 8,  # zero-length header
        struct.pack("<Q", 1 << 40),  # longer than the file
        struct.pack("<Q", 4) + b"[1,]",  # not JSON
        struct.pack("<Q", 2) + b"[]",  # not an object
        struct.pack("<Q", 30) + b'{"t":{"data_offsets":[0,99]}}',  # beyond the file
        struct.pack("<Q", 29) + b'{"t":{"data_offsets":[5,1]}} ',  # reversed
        struct.pack("<Q", 25) + b'{"t":{"data_offsets":1}} ',  # wrong type
    ]:
        assert safetensors_cuts(head, 50) is None, head
        assert plan(50, None) == [(0, 50)]


@given(
    size=st.integers(0, 3 * CHUNK_SIZE),
    cuts=st.lists(st.integers(-5, 3 * CHUNK_SIZE + 5), max_size=12),
)
def test_a_plan_covers_the_file_exactly_once(size: int, cuts: list[int]) -> None:
    bounds = plan(size, cuts)
    pos = 0
    for offset, length in bounds:
        assert offset == pos and 0 < length <= CHUNK_SIZE
        pos += length
    assert pos == size
    starts = {o for o, _ in bounds}
    assert {c for c in cuts if 0 <= c < size} <= starts


def test_cuts_are_at_least_min_segment_apart() -> None:
    data = safetensors(model())
    cuts = safetensors_cuts(data, len(data))
    assert cuts is not None
    data_cuts = cuts[1:]
    assert all(b - a >= MIN_SEGMENT for a, b in itertools.pairwise(data_cuts))
