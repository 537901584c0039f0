"""Where a served chunk's bytes come from: the original files, read and verified.

The seeder keeps no copy of what it publishes. A ``Served`` is one version's
chunk table and where its files live: the published files (or a cache
snapshot's blobs), or a pull's staging ``data/`` for a version this node is
still pulling, with the chunks verified there so far. ``read_chunk`` reads a
chunk into a reusable buffer and hashes it again before it may leave, so a
file changed after publishing is refused (``SourceChanged``, R-31) instead of
sent; ``read_packed`` packs it too where the connection's policy asks.
``read_pieces`` and ``read_ranges`` serve updates at piece granularity
(issue 18), from a chunk checked the same way.

Pure and synchronous (no trio): the server runs these in worker threads.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest, verify
from p2pckpt.manifest.pieces import PAD, Piece, chunk_pieces
from p2pckpt.store.locations import file_path
from p2pckpt.store.staging import Staging
from p2pckpt.wire import packing
from p2pckpt.wire.codec import CHUNK_HEADER_SIZE, chunk_header, packed_header


class SourceChanged(Exception):
    """A published file is gone, no longer regular, or no longer what was published."""


@dataclass(frozen=True)
class Served:
    """A version being served: its manifest, chunk table and file location."""

    manifest: Manifest
    location: Path
    chunks: tuple[tuple[str, Chunk], ...]
    have: set[int] | None = None  # a version being pulled (or a share): chunks held

    @classmethod
    def load(
        cls, envelope: bytes, location: str, selection: frozenset[str] | None = None
    ) -> Served:
        """Decode a catalog entry (worker thread: big manifests take a while);
        ``selection``: a multi-host share, holding only those files."""
        manifest = verify(envelope)
        chunks = tuple((f.path, c) for _, f, c in manifest.iter_chunks())
        if selection is None:
            return cls(manifest, Path(location), chunks)
        have = {i for i, (path, _) in enumerate(chunks) if path in selection}
        return cls(manifest, Path(location), chunks, have)

    @classmethod
    def partial(cls, staging: Staging) -> Served:
        """A version this node is pulling: files under its staging ``data/``."""
        manifest = staging.manifest
        chunks = tuple((f.path, c) for _, f, c in manifest.iter_chunks())
        return cls(manifest, staging.path / "data", chunks, staging.done)

    def file_path(self, relpath: str) -> Path:
        # a pull's staging data/ holds even a single-file version under its name
        kind = self.manifest.kind if self.have is None else "dir"
        return file_path(self.location, kind, relpath)  # a cache snapshot's link: its blob


def read_chunk(path: Path, chunk: Chunk, req_id: int, buf: bytearray) -> memoryview:
    """Read one chunk from the original file into ``buf`` and check its hash
    (worker thread). Returns the framed message: header and chunk bytes. No
    view of ``buf`` outlives a failure, so the buffer can be reused.

    Raises:
        SourceChanged: the file cannot be opened, is not regular, or differs.
    """
    size = CHUNK_HEADER_SIZE + chunk.length
    if len(buf) < size:
        buf.extend(bytes(size - len(buf)))
    buf[:CHUNK_HEADER_SIZE] = chunk_header(req_id, chunk.length)
    try:  # O_NONBLOCK: a FIFO swapped in for a published file cannot hang us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceChanged(f"cannot open {path}: {exc.strerror}") from None
    body = memoryview(buf)[CHUNK_HEADER_SIZE:size]
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceChanged(f"{path} is no longer a regular file")
        got = os.preadv(fd, [body], chunk.offset)
        # Pullers ask a source for runs of consecutive chunks (``schedule``):
        # have the disk read the next one while this one is hashed and sent
        # (a hint: a filesystem that refuses it costs nothing).
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, chunk.offset + chunk.length, chunk.length, os.POSIX_FADV_WILLNEED)
        good = got == chunk.length and chunk_hash(body) == chunk.digest
    finally:
        body.release()
        os.close(fd)
    if not good:
        raise SourceChanged(f"{path} changed after it was published")
    return memoryview(buf)[:size]


def read_packed(
    path: Path, chunk: Chunk, req_id: int, buf: bytearray, codec: int
) -> tuple[memoryview, int, float]:
    """``read_chunk``, then pack the chunk with ``codec`` (worker thread).
    Returns the frame to send (ChunkPacked if smaller, else the raw
    ChunkData in ``buf``), the packed size and the seconds packing took."""
    framed = read_chunk(path, chunk, req_id, buf)
    started = time.perf_counter()
    with framed[CHUNK_HEADER_SIZE:] as body:
        packed = packing.pack(codec, body)
    seconds = time.perf_counter() - started
    if len(packed) >= chunk.length:
        return framed, len(packed), seconds
    framed.release()
    frame = packed_header(req_id, codec, len(packed)) + packed
    return memoryview(frame), len(packed), seconds


def _read_verified(path: Path, chunk: Chunk, before: int, after: int) -> tuple[bytearray, int, int]:
    """The chunk with up to ``before``/``after`` bytes of the file around it
    (worker thread), its own bytes checked against the manifest first.
    Returns (bytes, where they start in the file, the file's size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceChanged(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceChanged(f"{path} is no longer a regular file")
        start = max(0, chunk.offset - before)
        end = min(st.st_size, chunk.offset + chunk.length + after)
        data = bytearray(max(0, end - start))
        got = os.preadv(fd, [data], start) if data else 0
    finally:
        os.close(fd)
    inner = chunk.offset - start
    if got != len(data) or end < chunk.offset + chunk.length:
        raise SourceChanged(f"{path} changed after it was published")
    with memoryview(data)[inner : inner + chunk.length] as body:
        if chunk_hash(body) != chunk.digest:
            raise SourceChanged(f"{path} changed after it was published")
    return data, start, st.st_size


def read_pieces(path: Path, chunk: Chunk) -> list[Piece]:
    """The content-defined pieces covering one chunk (worker thread), cut
    from a window PAD bytes wider each side, so they fall where the puller's
    cuts of its own copy of the file fall (``manifest/pieces.py``)."""
    data, start, size = _read_verified(path, chunk, PAD, PAD)
    return chunk_pieces(data, start, size, chunk.offset, chunk.length)


def read_ranges(path: Path, chunk: Chunk, ranges: tuple[tuple[int, int], ...]) -> bytes:
    """Byte ranges of one verified chunk, concatenated (worker thread)."""
    data, _, _ = _read_verified(path, chunk, 0, 0)
    view = memoryview(data)
    return b"".join(view[a : a + n] for a, n in ranges)
