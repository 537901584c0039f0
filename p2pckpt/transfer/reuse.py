"""Reuse before download: fill a partial copy from bytes already here (issue 6).

The catalog indexes every chunk of every version this node holds (published
in place or pulled) by its BLAKE3 hash. Before asking any peer, a pull looks
up the chunks it lacks and copies each from the first local file that still
holds it, verified like any chunk from the network (``Staging.write_chunk``
hashes before writing). A whole file that a copy we pulled holds unchanged is
hard-linked instead (``Staging.adopt``, verified through the new link): an
unchanged 10 GB shard costs a read, not a write and an fsync. A copy that
moved, changed or vanished since it was catalogued is simply skipped: the
index is a hint, the hash is the truth.
"""

from __future__ import annotations

import logging
import os
import stat

from p2pckpt.errors import ChunkCorrupt
from p2pckpt.manifest.manifest import FileEntry
from p2pckpt.store.staging import Staging

log = logging.getLogger("p2pckpt.pull")

# digest -> [(file, offset, length, in a copy p2pckpt pulled)]
Copies = dict[bytes, list[tuple[str, int, int, bool]]]


def identical_file(entry: FileEntry, copies: Copies) -> str | None:
    """A pulled copy's file that holds exactly ``entry``'s chunks at the same
    offsets, if the catalog knows one (the disk is checked on adoption)."""
    found: set[str] | None = None
    for chunk in entry.chunks:
        here = {
            file
            for file, pos, length, pulled in copies.get(chunk.digest, ())
            if pulled and pos == chunk.offset and length == chunk.length
        }
        found = here if found is None else found & here
        if not found:
            return None
    return min(found) if found else None


def reuse_local(staging: Staging, copies: Copies) -> int:
    """Take every missing chunk some local copy still holds; returns the
    bytes reused. A file identical to one in a copy we pulled is hard-linked
    whole (no write, nothing to fsync); other chunks are copied one by one.
    Blocking (run it in a worker thread)."""
    before = set(staging.done)
    sizes = [c.length for _, _, c in staging.manifest.iter_chunks()]
    for entry in staging.files.entries:  # the files selected (issue 19)
        source = identical_file(entry, copies)
        if source is not None:
            staging.adopt(entry.path, source)
    fds: dict[str, int] = {}  # -1: could not open
    size = max((c.length for _, _, c in staging.manifest.iter_chunks()), default=0)
    view = memoryview(bytearray(size))
    try:
        for index, _, chunk in staging.manifest.iter_chunks():
            if index in staging.done or index not in staging.wanted:
                continue
            for file, pos, length, _ in copies.get(chunk.digest, ()):
                if length != chunk.length:
                    continue
                fd = fds.get(file)
                if fd is None:
                    fd = fds[file] = open_regular(file)
                if fd < 0 or not read_exactly(fd, view[:length], pos):
                    continue
                try:
                    staging.write_chunk(index, view[:length])
                except ChunkCorrupt:
                    continue  # that copy changed since it was catalogued
                break
    finally:
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
    return sum(sizes[i] for i in staging.done - before)


def open_regular(path: str) -> int:
    """An fd for a regular file, or -1 (never blocks: a FIFO put in its place
    is opened non-blocking and refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def read_exactly(fd: int, view: memoryview, pos: int) -> bool:
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], pos + got)
        except OSError:
            return False
        if n == 0:
            return False  # the file is shorter now
        got += n
    return True
