"""Split a byte stream into chunks and hash each with BLAKE3.

The chunker takes a binary reader, not a path (the filesystem walk lives in
``manifest/walk.py``). Chunks are variable-length in the format; today the
boundaries are every ``CHUNK_SIZE`` bytes of a file plus its tail, unless
``manifest/layout.py`` knows the format (safetensors: cut at tensors, so a
grown header does not shift every chunk).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import blake3

CHUNK_SIZE = 4 << 20
MAX_CHUNK = 16 << 20


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of one file: where it is and what it hashes to."""

    offset: int
    length: int
    digest: bytes


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 of a chunk."""
    return blake3.blake3(data).digest()


def boundaries(size: int, chunk_size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """``(offset, length)`` of each chunk of a file of ``size`` bytes."""
    return [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]


def _fileno(reader: BinaryIO) -> int:
    """The reader's file descriptor, or -1 (an in-memory reader)."""
    try:
        return reader.fileno()
    except (AttributeError, OSError, ValueError):
        return -1


def hash_reader(
    reader: BinaryIO,
    size: int,
    on_bytes: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    bounds: list[tuple[int, int]] | None = None,
) -> list[Chunk]:
    """Hash exactly ``size`` bytes from ``reader`` into chunks (``bounds``,
    contiguous from 0, or every ``chunk_size`` bytes).

    Raises EOFError if the reader ends early (the file shrank while we read).
    One buffer is reused, so memory stays flat whatever the size.
    """
    bounds = boundaries(size, chunk_size) if bounds is None else bounds
    buf = bytearray(max((length for _, length in bounds), default=0))
    view = memoryview(buf)
    chunks = []
    fd = _fileno(reader)
    for offset, length in bounds:
        if fd >= 0:  # the disk reads the next chunk while this one is hashed
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, offset + length, length, os.POSIX_FADV_WILLNEED)
        got = 0
        while got < length:
            n = reader.readinto(view[got:length])  # type: ignore[attr-defined]
            if not n:
                raise EOFError(f"file ended at {offset + got} of {size} bytes")
            got += n
        chunks.append(Chunk(offset, length, chunk_hash(view[:length])))
        if on_bytes is not None:
            on_bytes(length)
    return chunks
