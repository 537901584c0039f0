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

Pieces are asked for PIPELINE chunks at once, then their ranges at once:
two round trips per window of chunks, not two per chunk.
"""

from __future__ import annotations

import logging
import os
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
PIPELINE: Final = 8  # piece lists asked ahead
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
        if index not in staging.done:
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
        if index not in staging.done and entry.path in found
    ]
    for src in sources:
        conn = await _dial(src)
        if conn is None:
            continue
        try:
            with trio.move_on_after(ANSWER_TIMEOUT * 4) as overall:  # never a hung step
                served = await _converse(staging, conn, todo, found, copies, on_chunk, done)
            if overall.cancelled_caught:
                log.info("piece step gave up peer=%s (no answer in time)", conn.label)
        except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
            log.info('piece step ended peer=%s error="%s"', conn.label, exc)
            served = False
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


async def _converse(
    staging: Staging,
    conn: PeerConnection,
    todo: list[tuple[int, str]],
    found: dict[str, str],
    copies: Copies,
    on_chunk: Callable[[int], None],
    done: Delta,
) -> bool:
    """Ask ``conn`` for the pieces of PIPELINE chunks at once, then for the
    ranges those chunks lack, at once: two round trips per window. False if
    it holds the version only in part, or not at all (not_found)."""
    root = staging.manifest.root
    sizes = {i: c.length for i, _, c in staging.manifest.iter_chunks()}
    indexes: dict[str, FileIndex] = {}
    indexed = 0
    next_id = 0
    answered = False
    useless: dict[str, int] = {}  # basis -> chunks its pieces did not help, in a row
    taken = {c.digest for i, _, c in staging.manifest.iter_chunks() if i in staging.done}
    for first in range(0, len(todo), PIPELINE):
        window: list[tuple[int, int, str]] = []  # (req_id, chunk, basis)
        for index, path in todo[first : first + PIPELINE]:
            basis = found[path]
            if useless.get(basis, 0) >= PIPELINE:
                continue  # a file rewritten whole: its chunks go to the swarm
            if basis not in indexes:
                if indexed >= MAX_INDEXED:
                    continue
                regions = unmatched(basis, copies, taken)
                indexes[basis] = await trio.to_thread.run_sync(FileIndex.build, basis, regions)
                indexed += sum(hi - lo for lo, hi in regions)
            window.append((next_id, index, basis))
            next_id += 1
        await conn.send_many([m.PiecesRequest(r, root, i) for r, i, _ in window])
        plans: list[tuple[int, int, str, Plan]] = []
        for req_id, index, basis in window:
            reply = await _answer(conn, req_id)
            if isinstance(reply, m.Error):
                if reply.code == m.NOT_FOUND and not answered:
                    return False
                continue
            if not isinstance(reply, m.PieceList):
                raise _unexpected(conn, reply)
            answered = True
            p = plan(reply.pieces, sizes[index], indexes[basis])
            useless[basis] = 0 if p is not None else useless.get(basis, 0) + 1
            if p is not None:
                plans.append((next_id, index, basis, p))
                next_id += 1
        await conn.send_many(
            [m.RangeRequest(r, root, i, p.fetch) for r, i, _, p in plans if p.fetch]
        )
        for req_id, index, basis, p in plans:
            fetched: bytes | bytearray = b""
            if p.fetch:
                reply = await _answer(conn, req_id)
                if isinstance(reply, m.Error):
                    continue
                if not isinstance(reply, m.ChunkData) or len(reply.data) != sum(
                    n for _, n in p.fetch
                ):
                    raise _unexpected(conn, reply)
                fetched = reply.data
            length = sizes[index]
            data = await trio.to_thread.run_sync(assemble, basis, length, p, fetched)
            if data is None:
                continue
            try:
                await trio.to_thread.run_sync(staging.write_chunk, index, data)
            except ChunkCorrupt:
                log.info("pieces did not make chunk %d: left to the swarm", index)
                continue
            done.chunks += 1
            done.fetched += len(fetched)
            done.local += length - len(fetched)
            on_chunk(length)
    return answered


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
