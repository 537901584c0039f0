"""The trio side of a swarm pull: connections to every source, driven by the
pure ``Scheduler`` (see ``pull.py`` for the whole story).

One task per connection keeps its pipeline full and receives; one writer
task per connection hashes and writes in a worker thread and only then
reports the chunk done, so "done" always means verified and journaled.
Requests offer the codecs this node can unpack; a packed chunk is unpacked
in the writer's worker thread too, into a buffer of exactly the chunk's
length, then verified like a raw one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
from p2pckpt.store.staging import Staging
from p2pckpt.transfer.peer import PeerConnection, remote_error
from p2pckpt.transfer.schedule import Scheduler, bitfield_to_int
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m
from p2pckpt.wire import packing

log = logging.getLogger("p2pckpt.pull")

PIPELINE: Final = 6  # requests in flight per connection
WRITE_QUEUE: Final = 3
HAVE_POLL: Final = 0.5
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
    known: bool = False  # its first Have has arrived
    bytes: int = 0
    chunks: int = 0
    wire: int = 0  # what those chunks took on the wire (less if packed)
    problem: str = ""  # why it was dropped ("" while it is fine)
    bad: bool = False  # dropped for a chunk that failed verification
    error: BaseException | None = None
    scopes: list[trio.CancelScope] = field(default_factory=list)

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
    ) -> None:
        manifest = staging.manifest
        self.staging = staging
        self.root = manifest.root
        self.sizes = [c.length for _, _, c in manifest.iter_chunks()]
        self.sched = Scheduler(self.sizes, set(staging.done))
        self.sources = sources
        self.on_chunk = on_chunk
        self.throttles = throttles
        self.streams = streams
        self.joiners = joiners
        self.accept = packing.available()  # codecs we offer in chunk requests
        self._writing: set[int] = set()  # chunks a writer is writing right now
        self._changed = trio.Event()
        self._last_progress = trio.current_time()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        self._fatal: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            for src in self.sources:
                for conn in list(src.conns):
                    nursery.start_soon(self._connection, src, conn)
            for joiner in self.joiners:
                nursery.start_soon(self._join, joiner, nursery)
            while not self.sched.complete:
                self._check_hope()
                with trio.move_on_after(HAVE_POLL):
                    await self._changed.wait()
            nursery.cancel_scope.cancel()
        if self._fatal is not None:  # a local failure (disk full, ...): the pull stops
            raise self._fatal

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
        if all(s.known and s.complete for s in alive) and not self.sched.outstanding:
            missing = self.sched.unavailable()
            if missing:
                first = (missing & -missing).bit_length() - 1
                raise NotFound(f"no source holds chunk {first} of this version")

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
        inflight: dict[int, int] = {}  # req_id -> chunk index: asked, not yet written
        lost: BaseException | None = None
        try:
            with scope:
                await self._converse(src, conn, inflight)
        except* NETWORK_ERRORS as group:
            lost = first_leaf(group)
        finally:
            src.scopes.remove(scope)
            await conn.aclose()
        if lost is not None:
            for index in inflight.values():
                self.sched.failed(index, src.peer)
            self._poke()
        return lost

    def _unpack_write(self, index: int, codec: int, packed: bytearray, out: bytearray) -> None:
        """Unpack a packed chunk into ``out``, then verify and write it (worker thread)."""
        packing.unpack(codec, packed, out)
        self.staging.write_chunk(index, out)

    async def _converse(self, src: Source, conn: PeerConnection, inflight: dict[int, int]) -> None:
        # (req_id, chunk bytes or packed bytes, codec: 0 for raw)
        write_send, write_recv = trio.open_memory_channel[tuple[int, bytearray, int]](WRITE_QUEUE)
        cancelled: set[int] = set()
        received: set[int] = set()  # req_ids whose data is with the writer
        next_id = 0
        have_pending = False
        last_have = -math.inf

        async def writer() -> None:
            async for req_id, data, codec in write_recv:
                index = inflight[req_id]
                try:
                    # Two sources' copies of one chunk (endgame) can both reach a
                    # writer before either is written: only the first is written
                    # and counted.
                    if self.sched.missing >> index & 1 and index not in self._writing:
                        size = self.sizes[index]
                        self._writing.add(index)
                        try:
                            if codec:
                                out = conn.buffers.get(size)
                                try:
                                    await trio.to_thread.run_sync(
                                        self._unpack_write, index, codec, data, out
                                    )
                                finally:
                                    conn.buffers.put(out)
                            else:
                                await trio.to_thread.run_sync(self.staging.write_chunk, index, data)
                        finally:
                            self._writing.discard(index)
                        self.sched.done(index, src.peer, trio.current_time())
                        src.bytes += size
                        src.wire += len(data)
                        src.chunks += 1
                        self._last_progress = trio.current_time()
                        self.on_chunk(size)
                        self._poke()
                except (ChunkCorrupt, RemoteProtocolError) as exc:  # never written: out it goes
                    self._drop(src, exc, bad=True)
                    return
                except Exception as exc:  # our disk, not the peer: the whole pull stops
                    self._fatal = exc
                    self._scope.cancel()
                    return
                finally:
                    if not codec:  # packed bodies have odd sizes: not worth pooling
                        conn.buffers.put(data)
                    received.discard(req_id)
                    del inflight[req_id]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async with write_send:
                while True:
                    now = trio.current_time()
                    # Someone else delivered a chunk we asked for: cancel ours.
                    delivered = [
                        r
                        for r, i in inflight.items()
                        if r not in received and not self.sched.missing >> i & 1
                    ]
                    for req_id in delivered:
                        del inflight[req_id]
                        cancelled.add(req_id)
                        await conn.send(m.Cancel(req_id))
                    polls = src.conns[0] is conn  # one connection per source asks for Have
                    due = now - last_have >= HAVE_POLL
                    if polls and due and not (have_pending or src.complete):
                        await conn.send(m.HaveRequest(self.root))
                        have_pending = True
                    while len(inflight) - len(received) < PIPELINE:
                        index = self.sched.pick(src.peer, now)
                        if index is None:
                            break
                        req_id, next_id = next_id, (next_id + 1) & 0xFFFFFFFF
                        inflight[req_id] = index
                        await conn.send(m.ChunkRequest(req_id, self.root, index, self.accept))
                    if len(inflight) == len(received) and not have_pending:
                        if self.sched.complete:
                            return
                        # Wake on progress anywhere, or when the next Have is due.
                        wake = last_have + HAVE_POLL if polls and not src.complete else math.inf
                        with trio.move_on_at(wake):
                            await self._changed.wait()
                        continue
                    msg = await conn.receive()
                    if isinstance(msg, m.ChunkData | m.ChunkPacked):
                        assert isinstance(msg.data, bytearray)
                        codec = msg.codec if isinstance(msg, m.ChunkPacked) else 0
                        if msg.req_id not in inflight or msg.req_id in received:
                            if not codec:
                                conn.buffers.put(msg.data)
                            if msg.req_id in cancelled:
                                cancelled.discard(msg.req_id)
                                continue
                            raise RemoteProtocolError(
                                f"{conn.label} sent an unrequested response (chunk)"
                            )
                        if codec and not (
                            self.accept >> codec & 1
                            and len(msg.data) < self.sizes[inflight[msg.req_id]]
                        ):
                            raise RemoteProtocolError(
                                f"{conn.label} packed a chunk with codec {codec}, which we did"
                                " not offer, or into no fewer bytes than the chunk"
                            )
                        for throttle in self.throttles:
                            await throttle.take(len(msg.data))
                        received.add(msg.req_id)
                        await write_send.send((msg.req_id, msg.data, codec))
                    elif isinstance(msg, m.Have) and have_pending and msg.root == self.root:
                        have_pending, last_have = False, trio.current_time()
                        src.complete = msg.complete
                        bits = None if msg.complete else bitfield_to_int(msg.bits, len(self.sizes))
                        if not src.known:
                            src.known = True
                            self.sched.add_peer(
                                src.peer, bits, max_window=PIPELINE * max(1, self.streams)
                            )
                        elif bits is None:
                            self.sched.update_have(src.peer, (1 << len(self.sizes)) - 1)
                        else:
                            self.sched.update_have(src.peer, bits)
                        fetching = bitfield_to_int(msg.fetching, len(self.sizes))
                        self.sched.update_soon(src.peer, 0 if msg.complete else fetching)
                        self._poke()
                    elif isinstance(msg, m.Error) and msg.req_id is not None:
                        if msg.req_id not in inflight or msg.req_id in received:
                            if msg.req_id in cancelled:
                                cancelled.discard(msg.req_id)
                                continue
                            raise RemoteProtocolError(
                                f"{conn.label} sent an unrequested response (error)"
                            )
                        if msg.code != m.NOT_FOUND:
                            raise remote_error(msg, conn.label)  # inflight: failed on the way out
                        index = inflight.pop(msg.req_id)
                        self.sched.lacks(src.peer, index)
                        self.sched.failed(index, src.peer)
                        self._poke()
                    else:
                        raise RemoteProtocolError(f"peer {conn.label} sent an unexpected message")
