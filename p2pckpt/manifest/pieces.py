"""Pieces: content-defined cuts inside chunks, for updates at rsync's granularity (issue 18).

A chunk (about 4 MiB) is what a pull asks for and verifies; a piece (about
16 KiB, cut by FastCDC where the content says, not at fixed offsets) is what
an update matches against bytes it already has. Both sides cut the same way:
the puller cuts its older copy of a file from the start; the seeder cuts a
window around one chunk (PAD bytes each side, so its cuts fall where a cut
from the file's start would: FastCDC's cuts depend only on the bytes since
the previous cut, and after a piece or two any two starting points agree).
Content shifted by an insertion still cuts into the same pieces, so it
still matches; only the pieces around an edit differ.

A piece's digest is BLAKE3 cut to DIGEST_BYTES. It need not resist an
attacker: the chunk assembled from local pieces and fetched ranges is
checked against the signed manifest's chunk hash before it is written, so a
lying piece list, or a collision, costs a whole-chunk fetch, never a wrong
byte.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import blake3

MIN_PIECE: Final = 4 << 10
AVG_PIECE: Final = 12 << 10  # FastCDC's average is this plus MIN_PIECE: about 16 KiB
MAX_PIECE: Final = 64 << 10
PAD: Final = 2 * MAX_PIECE  # how far around a chunk the seeder cuts from
BLOCK: Final = 16 << 20  # what an index reads at once
DIGEST_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes ``[start, start + length)`` (of a chunk, or a file), hashing to ``digest``."""

    start: int
    length: int
    digest: bytes


def piece_digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest(length=DIGEST_BYTES)


def _cutter() -> Any:
    import pyfastcdc  # a compiled FastCDC (about 4 GB/s); loaded only where pieces are cut

    return pyfastcdc.FastCDC(avg_size=AVG_PIECE, min_size=MIN_PIECE, max_size=MAX_PIECE)


def _kept(view: memoryview, window_start: int, file_size: int) -> Iterator[tuple[int, int]]:
    """``(offset in view, length)`` of each piece cut from a window of a file
    (its bytes from ``window_start``), less its first piece unless the window
    starts the file and its last unless it ends it: those were cut from an
    edge, not where the content says."""
    cuts = iter(_cutter().cut_buf(view))
    held = next(cuts, None)
    if held is not None and window_start > 0:
        held = next(cuts, None)
    if held is None:
        return
    for piece in cuts:  # the one held back is not the window's last
        yield held.offset, held.length
        held = piece
    if window_start + len(view) >= file_size:
        yield held.offset, held.length


def chunk_pieces(window: bytes | bytearray | memoryview, window_start: int, file_size: int,
                 chunk_start: int, chunk_length: int) -> list[Piece]:  # fmt: skip
    """The pieces covering one chunk, cut from ``window`` (the file's bytes
    from ``window_start``, reaching PAD or the file's ends around the chunk),
    with ``start`` relative to the chunk (negative for a piece that begins
    before it). Only the pieces kept are hashed."""
    view = memoryview(window)
    lo = chunk_start - window_start
    hi = lo + chunk_length
    return [
        Piece(at - lo, n, piece_digest(view[at : at + n]))
        for at, n in _kept(view, window_start, file_size)
        if at < hi and at + n > lo
    ]


class FileIndex:
    """Where each piece of a local file is: digest -> (offset, length)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where: dict[bytes, tuple[int, int]] = {}

    @classmethod
    def build(cls, path: str, regions: list[tuple[int, int]] | None = None) -> FileIndex:
        """Cut and hash the file's ``regions`` (``(start, end)``; None: all of
        it), BLOCK bytes at a time, each read with PAD bytes around it and only
        the pieces starting inside it kept: the same pieces a cut from the
        file's start gives, in flat memory, without reading what another
        copy already matched. Read with pread, not mmap: a file cut short
        meanwhile must not kill the process. Blocking: a worker thread's
        job. An unreadable file gives an empty index: it is a hint."""
        index = cls(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return index
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return index
            size = st.st_size
            for lo, hi in regions if regions is not None else [(0, size)]:
                for block in range(max(0, lo), min(hi, size), BLOCK):
                    index._add_block(fd, size, block, min(block + BLOCK, hi, size))
        except OSError:
            index.where.clear()
        finally:
            os.close(fd)
        return index

    def _add_block(self, fd: int, size: int, lo: int, hi: int) -> None:
        start = max(0, lo - PAD)
        view = memoryview(os.pread(fd, min(size, hi + PAD) - start, start))
        where = self.where
        for at, n in _kept(view, start, size):
            if lo <= start + at < hi:
                where.setdefault(piece_digest(view[at : at + n]), (start + at, n))
