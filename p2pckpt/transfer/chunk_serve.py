"""The seeder's answer to one ChunkRequest: find the version, read, maybe pack.

Theory of operation
-------------------

``Chunks`` is server-wide. It finds a version's chunk table (``Served``) by
root: published versions from a small LRU cache (VERSION_CACHE entries;
decoding a big manifest takes a worker thread), a host's share of a multi-host version
likewise, with only its own files' chunks (``have``); versions this node is still
pulling from ``partials``, rebuilt whenever their pull's set of verified
chunks is a new one and never kept past the pull. A chunk of a partial is
served only once verified here.

``Packing`` is per connection: whether the peer is on this machine, the
connection's ``PackPolicy`` (made at the first request that offers codecs;
it learns from packing times and, through the sender, from how fast the link
takes chunks, issue 7) and what packing saved, for the connection's log
line; ``Busy`` is the rest of what one connection is doing (a push running,
the versions it reads, cancelled requests). Reading and packing run in a
worker thread (``chunk_source``); a file changed after publishing becomes
one SOURCE_CHANGED Error (R-31).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import trio

from p2pckpt.manifest.paths import safe_display
from p2pckpt.store.catalog import Catalog
from p2pckpt.transfer.chunk_source import (
    Served,
    SourceChanged,
    read_chunk,
    read_packed,
    read_pieces,
    read_ranges,
)
from p2pckpt.transfer.packpolicy import PackPolicy
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.wire import messages as m
from p2pckpt.wire import packing
from p2pckpt.wire.codec import CHUNK_HEADER_SIZE, encode
from p2pckpt.wire.features import LEGACY

log = logging.getLogger("p2pckpt.serve")

VERSION_CACHE: Final = 16
PROGRESS_CACHE: Final = 4  # in-progress chunk tables kept (issue 21)
# Piece lists and ranges read a chunk (and a little around it) into memory of
# their own: at most this many at once, server-wide.
PIECE_READERS: Final = 2


class Packing:
    """One connection's packing: its policy and what it packed."""

    def __init__(self, *, local: bool = False, enabled: bool = True) -> None:
        self.local = local  # the peer is on this machine
        self.enabled = enabled  # the server packs at all ([transfer] compress)
        self.policy: PackPolicy | None = None  # once the peer accepts a codec
        self.chunks = self.packed = self.chunk_bytes = self.wire_bytes = 0

    def codec(self, req: m.ChunkRequest) -> int:
        """The codec to pack this chunk with (0: raw), by the connection's policy."""
        if not (req.accept and self.enabled):
            return 0
        if self.policy is None:  # the first request that offers codecs
            self.policy = PackPolicy(packing.available(), local=self.local)
        return self.policy.choose(req.accept)


def same_host(sock: trio.socket.SocketType) -> bool:
    """Whether a connected socket's peer is this machine (loopback, or our
    own address): no network in between, only CPU."""
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
        return bool(peer == local or ipaddress.ip_address(str(peer).split("%")[0]).is_loopback)
    except (OSError, ValueError, IndexError, TypeError):
        return False


class Busy:
    """What one connection is doing: a long request (a push) in progress, the
    versions it has been reading (so retention spares them), the chunks of
    each it was given (a seeder's Have says which chunks pullers connected
    now hold from it), its packing, and what the client speaks (LEGACY
    until it says Hello)."""

    def __init__(self, pack: Packing) -> None:
        self.features = LEGACY
        self.spoke = False  # it said Hello, or sent a first request without one
        self.working = False
        self.roots: set[bytes] = set()
        self.given: dict[bytes, int] = {}  # root -> bitmap of chunks asked for here
        self.cancelled: OrderedDict[int, None] = OrderedDict()
        self.pack = pack

    def cancel(self, req_id: int) -> None:
        """Skip ``req_id`` if it is still queued (bounded: old ids are forgotten)."""
        self.cancelled[req_id] = None
        while len(self.cancelled) > 2 * m.MAX_OUTSTANDING:
            self.cancelled.popitem(last=False)


class Chunks:
    """Chunk responses from this node's versions, for every connection."""

    def __init__(
        self,
        catalog: Catalog | None,
        partials: Partials | None = None,
        on_packed: Callable[[int, int], None] | None = None,  # (chunk, wire) bytes
        progress: ProgressBook | None = None,
    ) -> None:
        self._catalog = catalog
        self._progress = progress
        self._progress_served: dict[bytes, Served] = {}
        self._partials = partials
        self._on_packed = on_packed
        self._versions: OrderedDict[bytes, Served] = OrderedDict()
        self._partial_served: dict[bytes, Served] = {}
        self._piece_readers = trio.CapacityLimiter(PIECE_READERS)

    async def served(self, root: bytes) -> Served | None:
        """A version's chunk table, from a small server-wide cache."""
        held = self._versions.get(root)
        if held is not None:
            self._versions.move_to_end(root)
            return held
        entry = self._catalog.by_root(root, offered=True) if self._catalog is not None else None
        if entry is None:
            return self._in_progress(root) or self._partial(root)
        # a host's share of a multi-host version serves its own files' chunks only
        held = await trio.to_thread.run_sync(
            Served.load, entry.envelope, entry.location, entry.selected
        )
        self._versions[root] = held
        while len(self._versions) > VERSION_CACHE:
            self._versions.popitem(last=False)
        return held

    def drop_unheld(self) -> int:
        """Forget cached versions the catalog no longer holds (unpublished,
        retired, forgotten by gc), so their chunks stop being served at once;
        returns how many were dropped."""
        catalog = self._catalog
        if catalog is None:
            return 0
        gone = [root for root in self._versions if catalog.by_root(root) is None]
        for root in gone:
            del self._versions[root]
        return len(gone)

    def _in_progress(self, root: bytes) -> Served | None:
        """The finished files of a version still being written here (issue 21),
        served from where they are written, each chunk checked as it is read."""
        offered = self._progress.get(root) if self._progress is not None else None
        if offered is None:
            self._progress_served.pop(root, None)
            return None
        held = self._progress_served.get(root)
        if held is None:
            manifest = offered.manifest
            chunks = tuple((f.path, c) for _, f, c in manifest.iter_chunks())
            held = Served(manifest, offered.location, chunks)
            if len(self._progress_served) >= PROGRESS_CACHE:  # a follower may read two at once
                del self._progress_served[next(iter(self._progress_served))]
            self._progress_served[root] = held
        return held

    def _partial(self, root: bytes) -> Served | None:
        """A version this node is still pulling (never cached past its pull)."""
        partials = self._partials
        partial = partials.get(root) if partials is not None else None
        if partials is None or partial is None:
            self._partial_served.pop(root, None)
            return None
        held = self._partial_served.get(root)
        if held is None or held.have is not partial.staging.done:
            held = self._partial_served[root] = Served.partial(partial.staging)
            for gone in [r for r in self._partial_served if partials.get(r) is None]:
                del self._partial_served[gone]
        return held

    async def pieces_or_ranges(self, req: m.PiecesRequest | m.RangeRequest) -> bytes | memoryview:
        """The encoded answer to a PiecesRequest (a PieceList) or a RangeRequest
        (a ChunkData, as a memoryview: the sender caps and counts it like a
        chunk), or an Error. Only versions held whole: a version still
        being pulled lacks the bytes around its chunks."""
        held = await self.served(req.root)
        if held is None or held.have is not None:
            return encode(m.Error(m.NOT_FOUND, "unknown version", req.req_id))
        if req.index >= len(held.chunks):
            return encode(m.Error(m.BAD_REQUEST, "no such chunk", req.req_id))
        relpath, chunk = held.chunks[req.index]
        path = held.file_path(relpath)
        try:
            if isinstance(req, m.RangeRequest):
                if any(a + n > chunk.length for a, n in req.ranges):
                    return encode(m.Error(m.BAD_REQUEST, "range past the chunk", req.req_id))
                data = await trio.to_thread.run_sync(
                    read_ranges, path, chunk, req.ranges, limiter=self._piece_readers
                )
                return memoryview(encode(m.ChunkData(req.req_id, data)))
            pieces = await trio.to_thread.run_sync(
                read_pieces, path, chunk, limiter=self._piece_readers
            )
        except SourceChanged:
            what = f"{held.manifest.name}@{held.manifest.version}"
            return encode(
                m.Error(
                    m.SOURCE_CHANGED,
                    f"the seeder's copy of {what} changed after publishing",
                    req.req_id,
                )
            )
        if len(pieces) > m.MAX_PIECES:
            return encode(m.Error(m.BAD_REQUEST, "too many pieces to list", req.req_id))
        listed = tuple((p.start, p.length, p.digest) for p in pieces)
        return encode(m.PieceList(req.req_id, listed))

    async def prepare(
        self, req: m.ChunkRequest, buf: bytearray, pack: Packing
    ) -> bytes | memoryview:
        """The framed chunk (a view of ``buf``, or of its packed frame), or an
        encoded Error. Cancelling it may leave ``buf`` in use by the worker
        thread: the caller must not reuse it."""
        held = await self.served(req.root)
        if held is None:
            return encode(m.Error(m.NOT_FOUND, "unknown version", req.req_id))
        if req.index >= len(held.chunks):
            return encode(m.Error(m.BAD_REQUEST, "no such chunk", req.req_id))
        if held.have is not None and req.index not in held.have:
            return encode(m.Error(m.NOT_FOUND, "chunk not verified here yet", req.req_id))
        relpath, chunk = held.chunks[req.index]
        codec = pack.codec(req)
        path = held.file_path(relpath)
        try:
            if codec:
                framed, size, seconds = await trio.to_thread.run_sync(
                    read_packed, path, chunk, req.req_id, buf, codec
                )
                assert pack.policy is not None
                pack.policy.packed(codec, chunk.length, size, seconds)
            else:
                framed = await trio.to_thread.run_sync(read_chunk, path, chunk, req.req_id, buf)
        except SourceChanged as exc:
            what = f"{held.manifest.name}@{held.manifest.version}"
            log.error(
                'refused chunk name=%s version=%d error="%s"',
                held.manifest.name,
                held.manifest.version,
                safe_display(str(exc)),
            )
            return encode(
                m.Error(
                    m.SOURCE_CHANGED,
                    f"the seeder's copy of {what} changed after publishing",
                    req.req_id,
                )
            )
        pack.chunks += 1
        pack.chunk_bytes += chunk.length
        if framed.obj is buf:
            pack.wire_bytes += chunk.length
        else:
            packed = len(framed) - CHUNK_HEADER_SIZE - 1  # less its header and codec byte
            pack.packed += 1
            pack.wire_bytes += packed
            if self._on_packed is not None:
                self._on_packed(chunk.length, packed)
        return framed
