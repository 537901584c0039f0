"""Tests for p2pckpt.manifest.chunker: boundaries, hashing and reader independence."""

from __future__ import annotations

import io
import random

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.manifest.chunker import CHUNK_SIZE, Chunk, boundaries, chunk_hash, hash_reader

PROPERTY = settings(max_examples=200, database=None, deadline=None)


class TrickleReader(io.RawIOBase):
    """A reader whose ``readinto`` returns between 1 and ``most`` bytes, chosen at random."""

    def __init__(self, data: bytes, most: int, seed: int) -> None:
        self._data = data
        self._pos = 0
        self._most = most
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._rng.randint(1, self._most), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@PROPERTY
@given(size=st.integers(0, 10_000), chunk_size=st.integers(1, 2_000))
def test_boundaries_cover_size_exactly(size: int, chunk_size: int) -> None:
    """Boundaries are contiguous from 0, each at most chunk_size and non-empty, summing to size."""
    bounds = boundaries(size, chunk_size)
    offset = 0
    for off, length in bounds:
        assert off == offset
        assert 1 <= length <= chunk_size
        offset += length
    assert offset == size
    assert all(length == chunk_size for _, length in bounds[:-1])


def test_default_chunk_size_boundaries() -> None:
    """With the default chunk size a file is cut every CHUNK_SIZE bytes plus its tail."""
    assert boundaries(0) == []
    assert boundaries(1) == [(0, 1)]
    assert boundaries(CHUNK_SIZE) == [(0, CHUNK_SIZE)]
    assert boundaries(CHUNK_SIZE + 1) == [(0, CHUNK_SIZE), (CHUNK_SIZE, 1)]


@PROPERTY
@given(data=st.binary(max_size=3_000), chunk_size=st.integers(1, 700))
def test_digests_are_blake3_of_slices(data: bytes, chunk_size: int) -> None:
    """Each chunk's digest is the BLAKE3 of exactly its slice of the input."""
    chunks = hash_reader(io.BytesIO(data), len(data), chunk_size=chunk_size)
    assert [(c.offset, c.length) for c in chunks] == boundaries(len(data), chunk_size)
    for c in chunks:
        assert c.digest == blake3.blake3(data[c.offset : c.offset + c.length]).digest()
        assert c.digest == chunk_hash(data[c.offset : c.offset + c.length])


@PROPERTY
@given(
    data=st.binary(max_size=3_000),
    chunk_size=st.integers(1, 700),
    most=st.integers(1, 1_000),
    seed=st.integers(0, 2**32),
)
def test_chunks_independent_of_read_sizes(
    data: bytes, chunk_size: int, most: int, seed: int
) -> None:
    """A reader returning 1..N bytes per call yields the same chunks as one that returns all."""
    whole = hash_reader(io.BytesIO(data), len(data), chunk_size=chunk_size)
    trickled = hash_reader(TrickleReader(data, most, seed), len(data), chunk_size=chunk_size)
    assert trickled == whole


def test_one_byte_reader_default_chunk_size() -> None:
    """A reader that gives one byte per call still hashes correctly (no lost bytes)."""
    data = bytes(range(256)) * 4
    chunks = hash_reader(TrickleReader(data, 1, 0), len(data))
    assert chunks == [Chunk(0, len(data), blake3.blake3(data).digest())]


def test_empty_file_has_no_chunks() -> None:
    """A zero-byte file gives zero chunks and reads nothing."""
    assert hash_reader(io.BytesIO(b""), 0) == []
    assert hash_reader(io.BytesIO(b"ignored"), 0) == []


@PROPERTY
@given(data=st.binary(max_size=2_000), missing=st.integers(1, 500), chunk_size=st.integers(1, 700))
def test_short_reader_raises_eof(data: bytes, missing: int, chunk_size: int) -> None:
    """A reader that ends before ``size`` bytes raises EOFError."""
    with pytest.raises(EOFError):
        hash_reader(io.BytesIO(data), len(data) + missing, chunk_size=chunk_size)


def test_reads_only_size_bytes() -> None:
    """Bytes after ``size`` are left unread and do not affect the result."""
    reader = io.BytesIO(b"abcdefXYZ")
    chunks = hash_reader(reader, 6, chunk_size=4)
    assert chunks == [Chunk(0, 4, chunk_hash(b"abcd")), Chunk(4, 2, chunk_hash(b"ef"))]
    assert reader.read() == b"XYZ"


def test_progress_callback_sees_every_byte() -> None:
    """``on_bytes`` is called once per chunk with its length."""
    seen: list[int] = []
    hash_reader(io.BytesIO(bytes(10)), 10, on_bytes=seen.append, chunk_size=4)
    assert seen == [4, 4, 2]
