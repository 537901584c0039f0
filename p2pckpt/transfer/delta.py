"""Updates at piece granularity: of a chunk we lack, fetch only the bytes we lack (issue 18).

After whole chunks are taken from local copies (``reuse``), a chunk may
still be missing although most of its bytes are here: an older version of
the same file, rewritten in a 4 MiB region that straddles two chunks, or
shifted by a few inserted bytes. For each such chunk the puller asks one
source for the chunk's pieces (content-defined, about 16 KiB each:
``manifest/pieces.py``), finds each piece in its index of the older file
(its ``basis``), asks for the byte ranges no local piece covers, and
assembles the chunk: local bytes where they match, fetched bytes elsewhere.
The chunk is then written like any other, which means checked against the
signed manifest first: a lying piece list, a basis changed meanwhile or a
digest collision costs a whole-chunk fetch by the swarm, never a wrong byte.

What is tried and what is left to the swarm:

- only chunks of files that have a basis: the local file holding most of the
  file's chunks (the catalog's ``copies``), or else the same path in the
  newest other version of the same name here. A cold pull has none, so it
  asks nothing more and goes exactly as before;
- only chunks whose local pieces cover at least MIN_LOCAL of their bytes
  (less is not worth a second round trip), and no more of a file's chunks
  once PIPELINE in a row were not (a file rewritten whole);
- over one connection of its own (``redial``) to the first source that
  answers with pieces: a source that does not know these requests (an
  older version of p2pckpt closes the connection) or holds the version only
  in part (it says not_found) costs that connection, not the pull's;
- every answer within ANSWER_TIMEOUT, or the step ends.

PIPELINE piece lists are kept asked; a chunk's ranges are asked as soon as
its list is matched, and chunks are assembled and written by a task of
their own, while indexes of older files are built: the round trips, the
seeder's reads, the index and the disk overlap.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from p2pckpt.errors import ChunkCorrupt, P2pckptError, RemoteProtocolError
from p2pckpt.manifest.manifest import FileEntry
from p2pckpt.manifest.pieces import FileIndex
from p2pckpt.store.catalog import Catalog, Entry
from p2pckpt.store.locations import file_path
from p2pckpt.store.staging import Staging
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.transfer.reuse import Copies, open_regular, read_exactly
from p2pckpt.transfer.swarm import NETWORK_ERRORS, Source
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.pull")

MIN_LOCAL: Final = 0.125  # share of a chunk local pieces must cover to try
ANSWER_TIMEOUT: Final = 30.0
PIPELINE: Final = 16  # piece lists asked ahead
WRITE_QUEUE: Final = 4  # chunks waiting to be assembled and written
MAX_INDEXED: Final = 64 << 30  # bytes of older files indexed for one pull, at most


@dataclass
class Delta:
    """What the piece step did: chunks assembled, bytes fetched and taken locally."""

    chunks: int = 0
    fetched: int = 0
    local: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """How to assemble one chunk: local parts ``(at, length, basis offset)``
    and the ranges ``(at, length)`` to fetch, both relative to the chunk."""

    local: tuple[tuple[int, int, int], ...]
    fetch: tuple[tuple[int, int], ...]


def bases(staging: Staging, copies: Copies, older: list[Entry]) -> dict[str, str]:
    """For each file of the new version still missing chunks: the local file
    most likely its older self (see the module docstring); ``older``: other
    versions of the same name here, newest first. Blocking (manifests are
    decoded): a worker thread's job."""
    manifest = staging.manifest
    wanted: dict[str, FileEntry] = {}
    for index, entry, _ in manifest.iter_chunks():
        if index not in staging.done and index in staging.wanted:
            wanted[entry.path] = entry
    found: dict[str, str] = {}
    for path, entry in wanted.items():
        votes: dict[str, int] = {}
        for chunk in entry.chunks:
            for file, _, _, _ in copies.get(chunk.digest, ()):
                votes[file] = votes.get(file, 0) + 1
        if votes:
            found[path] = max(votes, key=lambda f: votes[f])
    missing = [p for p in wanted if p not in found]
    if missing:
        for version in older:
            try:
                old = version.manifest()
            except P2pckptError:
                continue
            have = {f.path for f in old.files}
            for path in [p for p in missing if p in have]:
                found[path] = str(file_path(Path(version.location), old.kind, path))
                missing.remove(path)
            if not missing:
                break
    return found


def unmatched(basis: str, copies: Copies, taken_digests: set[bytes]) -> list[tuple[int, int]]:
    """The parts ``(start, end)`` of ``basis`` that hold no chunk of the new
    version taken already (``taken_digests``): where the old bytes of what
    changed are. The rest was copied whole (``reuse``): not indexed again."""
    size = _size(basis)
    taken = sorted(
        (pos, pos + n)
        for digest in taken_digests
        for f, pos, n, _ in copies.get(digest, ())
        if f == basis
    )
    out, at = [], 0
    for lo, hi in taken:
        if lo > at:
            out.append((at, min(lo, size)))
        at = max(at, hi)
    if at < size:
        out.append((at, size))
    return [(lo, hi) for lo, hi in out if hi > lo]


def plan(pieces: tuple[tuple[int, int, bytes], ...], length: int, index: FileIndex) -> Plan | None:
    """Match a chunk's pieces against a local file's. None: the list does not
    tile the chunk exactly (a bad list: the whole chunk is fetched instead),
    or too little of it is here to be worth it."""
    local: list[tuple[int, int, int]] = []
    fetch: list[tuple[int, int]] = []
    at = 0
    for start, size, digest in pieces:
        lo, hi = max(0, start), min(length, start + size)
        if lo != at or hi <= lo:
            return None  # a gap, an overlap, or a piece outside the chunk
        where = index.where.get(digest)
        if where is not None and where[1] == size:
            pos = where[0] + lo - start
            last = local[-1] if local else None
            if last is not None and last[0] + last[1] == lo and last[2] + last[1] == pos:
                local[-1] = (last[0], last[1] + hi - lo, last[2])  # one read, not two
            else:
                local.append((lo, hi - lo, pos))
        elif fetch and fetch[-1][0] + fetch[-1][1] == lo:
            fetch[-1] = (fetch[-1][0], fetch[-1][1] + hi - lo)
        else:
            fetch.append((lo, hi - lo))
        at = hi
    if at != length:
        return None
    here = sum(n for _, n, _ in local)
    if here < MIN_LOCAL * length or len(fetch) > m.MAX_PIECES:
        return None
    return Plan(tuple(local), tuple(fetch))


def assemble(basis: str, length: int, p: Plan, fetched: bytes | bytearray) -> bytearray | None:
    """The chunk's bytes: local parts read from ``basis``, the rest from
    ``fetched`` (the ranges in order). None: the basis cannot be read
    (blocking: a worker thread's job)."""
    out = bytearray(length)
    view = memoryview(out)
    fd = open_regular(basis)
    if fd < 0:
        return None
    try:
        for at, n, pos in p.local:
            if not read_exactly(fd, view[at : at + n], pos):
                return None
    finally:
        os.close(fd)
    got = 0
    for at, n in p.fetch:
        view[at : at + n] = fetched[got : got + n]
        got += n
    return out


async def fill_pieces(
    staging: Staging,
    sources: list[Source],
    copies: Copies,
    catalog: Catalog | None,
    on_chunk: Callable[[int], None],
) -> Delta:
    """Assemble what missing chunks we can from local pieces and fetched
    ranges (see the module docstring); the rest is left to the swarm."""
    done = Delta()
    manifest = staging.manifest
    older = sorted(
        (e for e in (catalog.all() if catalog is not None else []) if e.name == manifest.name),
        key=lambda e: e.version,
        reverse=True,
    )  # the catalog is read on this thread (SQLite's connection is not shared)
    older = [e for e in older if e.root != manifest.root]
    found = await trio.to_thread.run_sync(bases, staging, copies, older)
    if not found:
        return done
    todo = [
        (index, entry.path)
        for index, entry, _ in staging.manifest.iter_chunks()
        if index not in staging.done and index in staging.wanted and entry.path in found
    ]
    for src in sources:
        conn = await _dial(src)
        if conn is None:
            continue
        served = False
        try:  # every answer is awaited for ANSWER_TIMEOUT at most: never a hung step
            served = await _converse(staging, conn, todo, found, copies, on_chunk, done)
        except* (*NETWORK_ERRORS, trio.TooSlowError) as group:
            log.info('piece step ended peer=%s error="%s"', conn.label, group.exceptions[0])
        finally:
            await conn.aclose()
        if served or done.chunks:
            break
    if done.chunks:
        log.info(
            "pieces name=%s version=%d chunks=%d fetched=%d local=%d",
            staging.manifest.name,
            staging.manifest.version,
            done.chunks,
            done.fetched,
            done.local,
        )
    return done


async def _dial(src: Source) -> PeerConnection | None:
    try:
        return await src.conns[0].redial()
    except NETWORK_ERRORS as exc:
        log.info('piece step cannot connect peer=%s error="%s"', src.peer.short, exc)
        return None


class _Building:
    """An index being built in a worker thread while the first answers come."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.index = FileIndex("")

    async def build(self, basis: str, regions: list[tuple[int, int]]) -> None:
        self.index = await trio.to_thread.run_sync(FileIndex.build, basis, regions)
        self.ready.set()


async def _converse(
    staging: Staging,
    conn: PeerConnection,
    todo: list[tuple[int, str]],
    found: dict[str, str],
    copies: Copies,
    on_chunk: Callable[[int], None],
    done: Delta,
) -> bool:
    """Keep PIPELINE piece lists asked of ``conn``; ask for a chunk's ranges
    as soon as its list is matched; assemble and write in a task of its own.
    Answers come in the order asked: ``expected`` is that order. Indexes
    of older files are built meanwhile. False if ``conn`` holds the version
    only in part, or not at all (not_found)."""
    root = staging.manifest.root
    sizes = {i: c.length for i, _, c in staging.manifest.iter_chunks()}
    taken = {c.digest for i, _, c in staging.manifest.iter_chunks() if i in staging.done}
    indexes: dict[str, _Building] = {}
    indexed = 0
    useless: dict[str, int] = {}  # basis -> chunks its pieces did not help, in a row
    expected: deque[tuple[int, int, str, Plan | None]] = deque()  # None: a piece list
    queue = deque(todo)
    ids = iter(range(1 << 32))
    lists = 0  # piece lists asked and not answered
    answered = False
    writes, to_write = trio.open_memory_channel[tuple[int, str, Plan, bytes | bytearray]](
        WRITE_QUEUE
    )
    async with trio.open_nursery() as nursery:
        # one writer: two were slower (one file, one lock, one GIL)
        nursery.start_soon(_writer, staging, to_write, sizes, on_chunk, done)
        async with writes:
            while True:
                asks: list[m.Message] = []
                while queue and lists < PIPELINE:
                    index, path = queue.popleft()
                    basis = found[path]
                    if useless.get(basis, 0) >= PIPELINE:
                        continue  # a file rewritten whole: its chunks go to the swarm
                    if basis not in indexes:
                        if indexed >= MAX_INDEXED:
                            continue
                        regions = unmatched(basis, copies, taken)
                        indexes[basis] = _Building()
                        nursery.start_soon(indexes[basis].build, basis, regions)
                        indexed += sum(hi - lo for lo, hi in regions)
                    req_id = next(ids)
                    asks.append(m.PiecesRequest(req_id, root, index))
                    expected.append((req_id, index, basis, None))
                    lists += 1
                await conn.send_many(asks)
                if not expected:
                    break
                req_id, index, basis, p = expected.popleft()
                reply = await _answer(conn, req_id)
                if p is not None:  # the ranges of a matched chunk
                    if isinstance(reply, m.Error):
                        continue
                    if not isinstance(reply, m.ChunkData) or len(reply.data) != sum(
                        n for _, n in p.fetch
                    ):
                        raise _unexpected(conn, reply)
                    await writes.send((index, basis, p, reply.data))
                    continue
                lists -= 1
                if isinstance(reply, m.Error):
                    if reply.code == m.NOT_FOUND and not answered:
                        nursery.cancel_scope.cancel()
                        return False
                    continue
                if not isinstance(reply, m.PieceList):
                    raise _unexpected(conn, reply)
                answered = True
                await indexes[basis].ready.wait()
                p = plan(reply.pieces, sizes[index], indexes[basis].index)
                useless[basis] = 0 if p is not None else useless.get(basis, 0) + 1
                if p is None:
                    continue
                if not p.fetch:
                    await writes.send((index, basis, p, b""))
                    continue
                range_id = next(ids)
                await conn.send(m.RangeRequest(range_id, root, index, p.fetch))
                expected.append((range_id, index, basis, p))
    return answered


async def _writer(
    staging: Staging,
    to_write: trio.MemoryReceiveChannel[tuple[int, str, Plan, bytes | bytearray]],
    sizes: dict[int, int],
    on_chunk: Callable[[int], None],
    done: Delta,
) -> None:
    """Assemble each chunk from its basis and fetched ranges, and write it
    (checked against the manifest first): off the conversation's path."""

    def put(index: int, basis: str, p: Plan, fetched: bytes | bytearray) -> bool:
        data = assemble(basis, sizes[index], p, fetched)
        if data is None:
            return False
        try:
            staging.write_chunk(index, data)
        except ChunkCorrupt:
            log.info("pieces did not make chunk %d: left to the swarm", index)
            return False
        return True

    async with to_write:
        async for index, basis, p, fetched in to_write:
            length = sizes[index]
            if not await trio.to_thread.run_sync(put, index, basis, p, fetched):
                continue
            done.chunks += 1
            done.fetched += len(fetched)
            done.local += length - len(fetched)
            on_chunk(length)


async def _answer(conn: PeerConnection, req_id: int) -> m.Message:
    """The next message, which must answer ``req_id`` (the server answers in order)."""
    with trio.fail_after(ANSWER_TIMEOUT):
        reply = await conn.receive()
    if getattr(reply, "req_id", None) != req_id:
        raise _unexpected(conn, reply)
    return reply


def _unexpected(conn: PeerConnection, reply: m.Message) -> P2pckptError:
    return RemoteProtocolError(f"{conn.label} answered out of turn: {type(reply).__name__}")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
