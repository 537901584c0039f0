"""The trio side of a swarm pull: connections to every source, driven by the
pure ``Scheduler`` (see ``pull.py`` for the whole story).

One task per connection pumps that connection's pure ``RequestBook``
(``requests.py``: request ids, the pipeline, cancels, Have polling, checks
on every answer): it sends what the book says, receives, and does what the
book makes of each message. One writer task per connection hashes and
writes in a worker thread and only then reports the chunk done, so "done"
always means verified and journaled.
Requests offer the codecs this node can unpack; a packed chunk is unpacked
in the writer's worker thread too, into a buffer of exactly the chunk's
length, then verified like a raw one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import trio

from p2pckpt.errors import (
    ChannelClosed,
    ChunkCorrupt,
    NotFound,
    P2pckptError,
    RemoteProtocolError,
    TransferError,
    first_leaf,
)
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import CHUNK_SIZE
from p2pckpt.manifest.paths import safe_display
from p2pckpt.store.staging import Staging
from p2pckpt.transfer.buffers import BufferPool, Room, room_for
from p2pckpt.transfer.peer import PeerConnection, remote_error
from p2pckpt.transfer.requests import (
    HAVE_POLL,
    Ignored,
    Refused,
    RequestBook,
    Write,
    pipeline_depth,
)
from p2pckpt.transfer.schedule import DIRECT_GRACE, Scheduler
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m
from p2pckpt.wire import packing

log = logging.getLogger("p2pckpt.pull")

WRITE_BATCH: Final = 32  # received chunks written in one worker-thread call, at most
STALL_TIMEOUT: Final = 120.0
# What a peer or the network can do to one connection.
NETWORK_ERRORS = (P2pckptError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass
class Source:
    """One peer of a swarm pull: its connections and what it did for us."""

    peer: PeerId
    conns: list[PeerConnection]
    route: str = ""
    via: str = ""
    complete: bool = False
    giving: bool = False  # complete, and says which chunks it gave others (polled on)
    fixed: bool = False  # a multi-host share: holds only its own files, for good
    known: bool = False  # its first Have has arrived
    bytes: int = 0
    chunks: int = 0
    wire: int = 0  # what those chunks took on the wire (less if packed)
    problem: str = ""  # why it was dropped ("" while it is fine)
    bad: bool = False  # dropped for a chunk that failed verification
    error: BaseException | None = None
    scopes: list[trio.CancelScope] = field(default_factory=list)

    @property
    def relayed(self) -> bool:
        return self.route == "relay"

    def report(self) -> dict[str, object]:
        return {
            "id": str(self.peer),
            "route": self.route,
            "via": self.via,
            "bytes": self.bytes,
            "wire": self.wire,
            "chunks": self.chunks,
            "status": "bad" if self.bad else ("lost" if self.problem else "ok"),
            **({"problem": self.problem} if self.problem else {}),
        }


Joiner = Callable[[], Awaitable[Source | None]]  # dials a source that joins mid-pull
# Runs for the whole pull, offering (peer, joiner) for each peer it finds.
Discover = Callable[[Callable[[PeerId, Joiner], None]], Awaitable[None]]
REDIALS: Final = 3  # redials of a broken connection in a row with no chunk in between
REDIAL_BACKOFF: Final = 0.25


def _redialable(lost: BaseException) -> bool:
    """A broken transport is worth dialling again; a refusal, a protocol
    violation, a stall or a bad chunk is not."""
    if isinstance(lost, ChannelClosed | trio.BrokenResourceError | trio.ClosedResourceError):
        return True
    return isinstance(lost, OSError)


def _corrupt_everywhere(corrupt: list[Source]) -> ChunkCorrupt:
    """Every source was banned for a bad chunk (most often the same chunk,
    bad at its origin): an integrity failure naming the chunks and peers."""
    first = min(s.error.index for s in corrupt if isinstance(s.error, ChunkCorrupt))
    who = ", ".join(
        f"{s.peer.short} (chunk {s.error.index})"
        for s in corrupt
        if isinstance(s.error, ChunkCorrupt)
    )
    return ChunkCorrupt(
        first,
        f"hash mismatch from every source: {who}; each was dropped and nothing"
        " unverified was written (the chunks verified so far are kept for the next run)",
    )


def waiting(channel: trio.MemoryReceiveChannel[Write], most: int) -> list[Write]:
    """Up to ``most`` items already in ``channel``, without waiting (none
    if it is empty, or closed: the rest comes later, or never)."""
    out: list[Write] = []
    while len(out) < most:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return out


class Swarm:
    """Fetch every chunk ``staging`` lacks from ``sources``, and from each
    source a joiner produces while the pull runs."""

    def __init__(
        self,
        staging: Staging,
        sources: list[Source],
        on_chunk: Callable[[int], None],
        throttles: list[Throttle],
        streams: int,
        joiners: Sequence[Joiner] = (),
        discover: Discover | None = None,
        unreached: Sequence[str] = (),
    ) -> None:
        manifest = staging.manifest
        self.staging = staging
        self.root = manifest.root
        self.sizes = [c.length for _, _, c in manifest.iter_chunks()]
        self.depth = pipeline_depth(self.sizes)
        # chunks of files not selected (issue 19) count as had: never asked for
        unwanted = set(range(len(self.sizes))) - staging.wanted
        self.sched = Scheduler(self.sizes, set(staging.done) | unwanted)
        self.sources = sources
        self.on_chunk = on_chunk
        self.throttles = throttles
        self.streams = streams
        self.joiners = joiners
        self.discover = discover
        self.unreached = list(unreached)  # peers tried before the pull, never reached
        self.accept = packing.available()  # codecs we offer in chunk requests
        self._writing: set[int] = set()  # chunks a writer is writing right now
        self.room = Room()  # chunk bodies on their way, all connections together
        self.buffers = BufferPool()  # and the buffers they arrive in
        self._fit_room()
        self._changed = trio.Event()
        self._last_progress = trio.current_time()

    def _fit_room(self) -> None:
        """More sources, more chunks asked at once (``room_for``): each keeps
        its link busy, not the first few."""
        self.room.capacity = room_for(len(self.sources))
        self.buffers.capacity = self.room.capacity + CHUNK_SIZE

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        self._fatal: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._await_direct(nursery)
            for src in self.sources:
                for conn in list(src.conns):
                    nursery.start_soon(self._connection, src, conn)
            for joiner in self.joiners:
                nursery.start_soon(self._join, joiner, nursery)
            if self.discover is not None:
                nursery.start_soon(self.discover, partial(self._offered, nursery))
            while not self.sched.complete:
                self._check_hope()
                with trio.move_on_after(HAVE_POLL):
                    await self._changed.wait()
            nursery.cancel_scope.cancel()
        if self._fatal is not None:  # a local failure (disk full, ...): the pull stops
            raise self._fatal

    def _await_direct(self, nursery: trio.Nursery) -> None:
        """Relayed sources wait (up to DIRECT_GRACE) for the direct ones to
        say what they hold; when the grace ends, the waiting ones are woken."""
        direct = [s for s in self.sources if not s.relayed]
        if not direct or len(direct) == len(self.sources):
            return
        until = trio.current_time() + DIRECT_GRACE
        for src in direct:
            self.sched.expect(src.peer, until)

        async def wake() -> None:
            await trio.sleep_until(until)
            self._poke()

        nursery.start_soon(wake)

    def _offered(self, nursery: trio.Nursery, peer: PeerId, joiner: Joiner) -> None:
        """A peer found mid-pull: dialled unless it is a source already."""
        if not self.sched.complete and all(s.peer != peer for s in self.sources):
            nursery.start_soon(self._join, joiner, nursery)

    async def _join(self, joiner: Joiner, nursery: trio.Nursery) -> None:
        try:
            src = await joiner()
        except Exception as exc:  # a hint is only a hint: never the pull's end
            log.info('source could not join error="%s"', exc)
            return
        if src is None:
            return
        if self.sched.complete or any(s.peer == src.peer for s in self.sources):
            for conn in src.conns:
                await conn.aclose()
            return
        log.info("source joined peer=%s via=%s", src.peer.short, src.via)
        self.sources.append(src)
        self._fit_room()
        for conn in list(src.conns):
            nursery.start_soon(self._connection, src, conn)

    def _check_hope(self) -> None:
        """Raise if no source left can supply what is missing."""
        alive = [s for s in self.sources if not s.problem]
        if not alive:
            if len(self.sources) == 1 and self.sources[0].error is not None:
                raise self.sources[0].error  # the one source's own error (and exit code)
            corrupt = [s for s in self.sources if isinstance(s.error, ChunkCorrupt)]
            if corrupt and all(s.bad for s in self.sources):
                raise _corrupt_everywhere(corrupt)  # integrity (exit 9), not "the network"
            raise TransferError(
                "every source failed: "
                + "; ".join(f"{s.peer.short}: {s.problem}" for s in self.sources)
            )
        now = trio.current_time()
        if now - self._last_progress > STALL_TIMEOUT:
            raise TransferError(f"no chunk arrived for {STALL_TIMEOUT:.0f}s from any source")
        if all(s.known and (s.complete or s.fixed) for s in alive) and not self.sched.outstanding:
            missing = self.sched.unavailable()
            if missing:
                raise NotFound(self._missing_message(missing))

    def _missing_message(self, missing: int) -> str:
        """Which files no source left holds (a multi-host version whose host
        is gone, say), which sources were lost, and which peers the pull
        could not reach at all (a gone host is most likely among them)."""
        manifest = self.staging.manifest
        files = sorted(
            {entry.path for index, entry, _ in manifest.iter_chunks() if missing >> index & 1}
        )
        shown = ", ".join(safe_display(p) for p in files[:5])
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        lost = [f"{s.peer.short} ({s.problem})" for s in self.sources if s.problem]
        why = f"; sources lost: {'; '.join(lost)}" if lost else ""
        if self.unreached:  # at most 5, as the files: one line, however many peers
            extra = len(self.unreached) - 5
            why += f"; unreachable: {', '.join(self.unreached[:5])}"
            why += f" and {extra} more" if extra > 0 else ""
        return (
            f"no source holds {len(files)} file(s) of {manifest.name}@{manifest.version}:"
            f" {shown}{more} (a host holding them may be gone){why}"
        )

    def _drop(self, src: Source, error: BaseException, bad: bool = False) -> None:
        if src.problem:
            return
        problem = str(error) or type(error).__name__
        src.problem, src.bad, src.error = problem, bad, error
        if bad:
            self.sched.ban(src.peer)
            log.info('bad source peer=%s error="%s"', src.peer.short, problem)
        else:
            self.sched.remove(src.peer)
            log.info('source lost peer=%s error="%s"', src.peer.short, problem)
        for scope in src.scopes:
            scope.cancel()
        self._poke()

    async def _connection(self, src: Source, conn: PeerConnection) -> None:
        """Run one connection; a connection that breaks (a relay session at
        its byte or time cap, a reset) is dialled again the same way, up to
        REDIALS times in a row without a chunk delivered in between; a
        failure loses only this connection (and the source, if it was the
        last). A peer that refuses us, or sends garbage, is not redialled."""
        failures = 0
        while True:
            before = src.chunks
            lost = await self._run_connection(src, conn)
            if lost is None:
                return
            failures = 0 if src.chunks > before else failures + 1
            again = None
            if _redialable(lost) and failures <= REDIALS and not self.sched.complete:
                again = await self._redial(src, conn, failures)
            if again is None:
                src.conns.remove(conn)
                if not src.conns:
                    self._drop(src, lost)
                self._poke()
                return
            src.conns[src.conns.index(conn)] = again
            conn = again

    async def _redial(
        self, src: Source, conn: PeerConnection, failures: int
    ) -> PeerConnection | None:
        """A new connection to ``src`` made the way ``conn`` was, or None."""
        await trio.sleep(REDIAL_BACKOFF * 2 ** max(0, failures - 1))
        try:
            again = await conn.redial()
        except NETWORK_ERRORS as exc:
            log.info('redial failed peer=%s error="%s"', src.peer.short, exc)
            return None
        log.info("redialled peer=%s route=%s", src.peer.short, again.route)
        return again

    async def _run_connection(self, src: Source, conn: PeerConnection) -> BaseException | None:
        """Converse over ``conn`` until it ends; the error that broke it, if any
        (its requests in flight go back to the scheduler)."""
        scope = trio.CancelScope()
        src.scopes.append(scope)
        book = RequestBook(
            self.sched,
            src,
            self.root,
            conn.label,
            accept=self.accept,
            max_window=self.depth * max(1, self.streams),
            depth=self.depth,
            room=self.room,
        )
        conn.buffers = self.buffers
        lost: BaseException | None = None
        try:
            with scope:
                await self._converse(src, conn, book)
        except* NETWORK_ERRORS as group:
            lost = first_leaf(group)
        finally:
            src.scopes.remove(scope)
            # However it ended (broken, its source dropped or banned, the pull
            # done): what it still had in flight goes back to the scheduler,
            # and its bytes leave the room, or no connection could ask again.
            book.lost()
            self._poke()
            await conn.aclose()
        return lost

    async def _converse(self, src: Source, conn: PeerConnection, book: RequestBook) -> None:
        """Pump ``book``: send what it says, receive, do what it says, until
        the pull is complete (or the connection fails: raises)."""
        write_send, write_recv = trio.open_memory_channel[Write](self.depth)
        waiting_since = trio.current_time()  # for an answer: the idle timeout counts from here
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, src, conn, book, write_recv)
            async with write_send:
                while True:
                    book.polling = src.conns[0] is conn  # one connection per source asks for Have
                    # Answers already here first: the requests that refill the
                    # pipeline behind them then go out in one batch.
                    if not conn.pending:
                        used = self.room.used
                        if book.idle():
                            waiting_since = trio.current_time()
                        released = book.released
                        await conn.send_many(book.to_send(trio.current_time()))
                        if book.released > released:
                            log.info(
                                "quiet source peer=%s gave back %d requests to other sources",
                                src.peer.short,
                                book.released - released,
                            )
                        if self.room.used < used:  # Cancels freed room: others may ask
                            self._poke()
                    if book.idle() and not conn.pending:
                        if self.sched.complete:
                            return
                        # Wake on progress anywhere, or when the next Have is due.
                        due = book.next_deadline()
                        with trio.move_on_at(math.inf if due is None else due):
                            await self._changed.wait()
                        continue
                    # Wake when what is asked here counts as stalled (to_send
                    # gives it back), without restarting the idle timeout.
                    stall = book.stall_deadline()
                    msg: m.Message | None = None
                    with trio.move_on_at(math.inf if stall is None else stall):
                        msg = await conn.receive(since=waiting_since)
                        waiting_since = trio.current_time()
                    if msg is None:
                        continue
                    action = book.on_message(msg, trio.current_time())
                    if isinstance(action, Write):
                        for throttle in self.throttles:
                            await throttle.take(len(action.data))
                        await write_send.send(action)
                    elif isinstance(action, Refused):
                        raise remote_error(action.error, conn.label)  # in flight: lost
                    elif isinstance(action, Ignored):
                        if isinstance(msg, m.ChunkData) and isinstance(msg.data, bytearray):
                            conn.buffers.put(msg.data)  # packed bodies are not pooled
                    else:  # HaveApplied, NotHere: other connections may have work
                        self._poke()

    async def _writer(
        self,
        src: Source,
        conn: PeerConnection,
        book: RequestBook,
        chunks: trio.MemoryReceiveChannel[Write],
    ) -> None:
        """Verify and write what ``conn`` received, in a worker thread: the
        chunks waiting together go in one thread call (a folder of small
        files would otherwise pay a thread hop per file, more than its write)."""
        async for first in chunks:
            batch = [first, *waiting(chunks, WRITE_BATCH - 1)]
            try:
                await self._write(src, conn, book, batch)
            except (ChunkCorrupt, RemoteProtocolError) as exc:  # never written: out it goes
                self._drop(src, exc, bad=True)
                return
            except Exception as exc:  # our disk, not the peer: the whole pull stops
                self._fatal = exc
                self._scope.cancel()
                return
            finally:
                for chunk in batch:
                    if not chunk.codec and isinstance(chunk.data, bytearray):
                        conn.buffers.put(chunk.data)  # packed bodies have odd sizes
                    book.release(chunk.req_id)
                self._poke()  # their bytes left the room: a connection may ask again

    async def _write(
        self, src: Source, conn: PeerConnection, book: RequestBook, batch: list[Write]
    ) -> None:
        # Two sources' copies of one chunk (endgame) can both reach a writer
        # before either is written: only the first is written and counted.
        todo: list[Write] = []
        for chunk in batch:
            if self.sched.missing >> chunk.index & 1 and chunk.index not in self._writing:
                self._writing.add(chunk.index)
                todo.append(chunk)
            else:  # if the copy being written fails, the chunk must be asked again
                book.skipped(chunk.req_id)
        if not todo:
            return
        outs = [conn.buffers.get(self.sizes[c.index]) if c.codec else None for c in todo]
        try:
            written, error = await trio.to_thread.run_sync(self._write_batch, todo, outs)
        finally:
            for out in outs:
                if out is not None:
                    conn.buffers.put(out)
            self._writing.difference_update(c.index for c in todo)
        now = trio.current_time()
        for chunk in todo[:written]:
            size = self.sizes[chunk.index]
            book.written(chunk.req_id, now)
            src.bytes += size
            src.wire += len(chunk.data)
            src.chunks += 1
            self.on_chunk(size)
        if written:
            self._last_progress = now
            self._poke()
        if error is not None:
            raise error

    def _write_batch(
        self, todo: list[Write], outs: list[bytearray | None]
    ) -> tuple[int, Exception | None]:
        """Verify and write ``todo`` in turn (worker thread): how many were
        written, and the error that stopped the rest (those before it are
        written and journaled, and must be counted)."""
        for n, (chunk, out) in enumerate(zip(todo, outs, strict=True)):
            try:
                if out is None:
                    self.staging.write_chunk(chunk.index, chunk.data)
                else:
                    self._unpack_write(chunk.index, chunk.codec, chunk.data, out)
            except Exception as exc:
                return n, exc
        return len(todo), None

    def _unpack_write(
        self, index: int, codec: int, packed: bytes | bytearray, out: bytearray
    ) -> None:
        """Unpack a packed chunk into ``out``, then verify and write it (worker thread)."""
        packing.unpack(codec, packed, out)
        self.staging.write_chunk(index, out)
