"""The seeder: answer trusted peers' requests from the catalog's own files.

Per connection (one nursery)::

    admission : per-source rate, then a pre-auth pool (``admission``:
                direct per source and in total, relayed sessions apart);
                a full pool sheds its oldest waiter, a refused client is
                told "busy" (an empty handshake frame) and retries (R-10, R-65)
    handshake : Noise, one HANDSHAKE_TIMEOUT from accept (R-09)
    trust     : the peer must be in the trust store, else one Error and
                close; each request then needs its role (List, Manifest,
                Have and chunks "pull", a push "push"), checked against the
                trust store as it is at that moment; a trust change closes
                the open connections of every peer no longer trusted
                within TRUST_RECHECK (R-63)
    reader    : decrypt, parse, queue requests (more than MAX_OUTSTANDING
                queued = protocol violation, connection closed)
    preparer  : take a buffer from the server-wide budget, read + re-hash
                the chunk in a worker thread (a file changed after
                publishing is caught here, R-31), and pack it there too when
                the connection's ``PackPolicy`` says it pays (issue 7)
    sender    : encrypt and send prepared responses in order, give the
                buffer back; time how fast the link takes chunks

Limits (R-50): pre-auth connections per source and in total (and relayed),
authenticated connections per peer and in total, outstanding requests,
chunk buffers for the whole server (memory stays bounded however many peers
pull) and per peer, upload rate per peer, stall, send and idle timeouts. Any error ends that one
connection and is logged; nothing a peer does ends the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT, SecureStream, open_secure
from p2pckpt.discovery.sightings import Sightings
from p2pckpt.errors import (
    HandshakeFailed,
    ManifestError,
    P2pckptError,
    RemoteProtocolError,
    TrustError,
    first_leaf,
)
from p2pckpt.hfcache import real_path, source_path
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest, validate_name, verify
from p2pckpt.manifest.paths import safe_display
from p2pckpt.store.staging import Staging
from p2pckpt.transfer.admission import PreAuth, Ticket
from p2pckpt.transfer.listen import open_listeners
from p2pckpt.transfer.packpolicy import PackPolicy
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.ratelimit import RateLimiter, source_key
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m
from p2pckpt.wire import packing
from p2pckpt.wire.codec import (
    CHUNK_HEADER_SIZE,
    SERVER_ACCEPTS,
    MessageReader,
    chunk_header,
    encode,
    packed_header,
)

log = logging.getLogger("p2pckpt.serve")

BUSY: Final = b"\x00\x00"  # an empty handshake frame: "busy, retry shortly"
BUSY_TIMEOUT: Final = 1.0  # a refusal is best effort
MAX_CONNECTIONS: Final = 128
MAX_CONNECTIONS_PER_PEER: Final = 16
MAX_CHUNK_BUFFERS: Final = 16
PEER_BUFFERS: Final = MAX_CHUNK_BUFFERS // 2  # one peer's share, however many connections
IDLE_TIMEOUT: Final = 300.0
SEND_TIMEOUT: Final = 60.0
# A connection whose peer does not take STALL_SLICE bytes within STALL_SECONDS
# (under ~50 KB/s, after the kernel's buffers filled) is not reading: dropped,
# so its buffers serve others.
STALL_SECONDS: Final = 5.0
TRUST_RECHECK: Final = 0.25  # how often the trust file is looked at for open connections
PREPARED_QUEUE: Final = 2
REQUEST_WINDOW: Final = 64 * 1024
VERSION_CACHE: Final = 16


class _SourceChanged(Exception):
    pass


@dataclass(frozen=True)
class _Served:
    """A version being served: its manifest, chunk table and file location."""

    manifest: Manifest
    location: Path
    chunks: tuple[tuple[str, Chunk], ...]
    have: set[int] | None = None  # a version being pulled: its verified chunks

    @classmethod
    def load(cls, envelope: bytes, location: str) -> _Served:
        """Decode a catalog entry (worker thread: big manifests take a while)."""
        manifest = verify(envelope)
        chunks = tuple((f.path, c) for _, f, c in manifest.iter_chunks())
        return cls(manifest, Path(location), chunks)

    @classmethod
    def partial(cls, staging: Staging) -> _Served:
        """A version this node is pulling: files under its staging ``data/``."""
        manifest = staging.manifest
        chunks = tuple((f.path, c) for _, f, c in manifest.iter_chunks())
        return cls(manifest, staging.path / "data", chunks, staging.done)

    def file_path(self, relpath: str) -> Path:
        if self.manifest.kind == "file" and self.have is None:
            return real_path(self.location)  # a cache snapshot's link: its blob
        return source_path(self.location, relpath)


def _read_chunk(path: Path, chunk: Chunk, req_id: int, buf: bytearray) -> memoryview:
    """Read one chunk from the original file into ``buf`` and check its hash
    (worker thread). Returns the framed message: header and chunk bytes. No
    view of ``buf`` outlives a failure, so the buffer can be reused."""
    size = CHUNK_HEADER_SIZE + chunk.length
    if len(buf) < size:
        buf.extend(bytes(size - len(buf)))
    buf[:CHUNK_HEADER_SIZE] = chunk_header(req_id, chunk.length)
    try:  # O_NONBLOCK: a FIFO swapped in for a published file cannot hang us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise _SourceChanged(f"cannot open {path}: {exc.strerror}") from None
    body = memoryview(buf)[CHUNK_HEADER_SIZE:size]
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _SourceChanged(f"{path} is no longer a regular file")
        got = os.preadv(fd, [body], chunk.offset)
        good = got == chunk.length and chunk_hash(body) == chunk.digest
    finally:
        body.release()
        os.close(fd)
    if not good:
        raise _SourceChanged(f"{path} changed after it was published")
    return memoryview(buf)[:size]


def _read_packed(
    path: Path, chunk: Chunk, req_id: int, buf: bytearray, codec: int
) -> tuple[memoryview, int, float]:
    """``_read_chunk``, then pack the chunk with ``codec`` (worker thread).
    Returns the frame to send (ChunkPacked if smaller, else the raw
    ChunkData in ``buf``), the packed size and the seconds packing took."""
    framed = _read_chunk(path, chunk, req_id, buf)
    started = time.perf_counter()
    with framed[CHUNK_HEADER_SIZE:] as body:
        packed = packing.pack(codec, body)
    seconds = time.perf_counter() - started
    if len(packed) >= chunk.length:
        return framed, len(packed), seconds
    framed.release()
    frame = packed_header(req_id, codec, len(packed)) + packed
    return memoryview(frame), len(packed), seconds


def _same_host(sock: trio.socket.SocketType) -> bool:
    """Whether a connected socket's peer is this machine (loopback, or our
    own address): no network in between, only CPU."""
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
        return bool(peer == local or ipaddress.ip_address(str(peer).split("%")[0]).is_loopback)
    except (OSError, ValueError, IndexError, TypeError):
        return False


class _Busy:
    """What one connection is doing: a long request (a push) in progress, the
    versions it has been reading (so retention spares them), and whether
    packing chunks pays on its link."""

    def __init__(self, local: bool = False) -> None:
        self.working = False
        self.roots: set[bytes] = set()
        self.cancelled: OrderedDict[int, None] = OrderedDict()
        self.local = local  # the peer is on this machine
        self.policy: PackPolicy | None = None  # once the peer accepts a codec
        self.chunks = self.packed = self.chunk_bytes = self.wire_bytes = 0

    def cancel(self, req_id: int) -> None:
        """Skip ``req_id`` if it is still queued (bounded: old ids are forgotten)."""
        self.cancelled[req_id] = None
        while len(self.cancelled) > 2 * m.MAX_OUTSTANDING:
            self.cancelled.popitem(last=False)


class _BufferBudget:
    """Chunk buffers shared by every connection: at most ``count`` exist, so
    server memory is bounded whatever the number of peers (R-50, R-52)."""

    def __init__(self, count: int) -> None:
        self._slots = trio.Semaphore(count)
        self._free: list[bytearray] = []

    async def acquire(self) -> bytearray:
        await self._slots.acquire()
        return self._free.pop() if self._free else bytearray()

    def release(self, buf: bytearray | None) -> None:
        """Give a slot back; ``buf`` is reused unless None (possibly still in use)."""
        if buf is not None:
            self._free.append(buf)
        self._slots.release()


@dataclass
class _Share:
    """One peer's share of the server, whatever its number of connections: at
    most PEER_BUFFERS chunk buffers and its own upload rate (``[limits]
    upload_per_peer``), so no single peer can starve the others (R-65); and
    its open connections, closed when it stops being trusted."""

    slots: trio.Semaphore
    throttle: Throttle | None
    scopes: set[trio.CancelScope] = field(default_factory=set)


class _Lease:
    """The chunk buffers one connection holds from the server's budget (and
    its peer's share). The connection's end returns every one still held,
    however it ends (reset, kill, timeout, cancellation with a prepared chunk
    queued or half sent): a slot lost per dead connection would wedge the
    server after a few killed pulls (R-66)."""

    def __init__(self, budget: _BufferBudget, share: _Share) -> None:
        self._budget = budget
        self._share = share
        self.held = 0

    async def acquire(self) -> bytearray:
        await self._share.slots.acquire()
        try:
            buf = await self._budget.acquire()
        except BaseException:
            self._share.slots.release()
            raise
        self.held += 1
        return buf

    def release(self, buf: bytearray | None) -> None:
        self.held -= 1
        self._budget.release(buf)
        self._share.slots.release()

    def close(self) -> None:
        """Give back what is still held (buffers not reused: views may remain)."""
        while self.held:
            self.release(None)


_Prepared = tuple[bytes | memoryview, bytearray | None]
# (pusher, the address its connection came from or None if relayed, request,
#  report(bytes done, bytes total) for progress)
PushHandler = Callable[
    [PeerId, tuple[str, int] | None, m.PushRequest, Callable[[int, int], None]],
    Awaitable[m.PushResult],
]


class Server:
    """Serves one home's catalog to trusted peers."""

    def __init__(
        self,
        home: Home,
        on_push: PushHandler | None = None,
        bandwidth: int = 0,
        *,
        compress: bool = True,
        per_peer: int = 0,
    ) -> None:
        self.home = home
        self.on_push = on_push
        self._throttle = Throttle(bandwidth) if bandwidth > 0 else None
        self._per_peer = per_peer  # upload cap per peer, bytes/s (0: none)
        self.compress = compress  # pack chunks where it pays ([transfer] compress)
        self.on_served: Callable[[int], None] | None = None  # chunk bytes sent (metrics)
        self.on_packed: Callable[[int, int], None] | None = None  # (chunk, wire) bytes, packed
        self.sightings: Sightings | None = None  # who connected, how (status)
        self.partials: Partials | None = None  # versions being pulled here (swarm)
        self._partial_served: dict[bytes, _Served] = {}
        self._preauth = PreAuth()
        self._shedding: dict[Ticket, trio.CancelScope] = {}
        self._peers: Counter[PeerId] = Counter()
        self._serving: Counter[bytes] = Counter()
        self._per_source = RateLimiter()
        self._log_limit = RateLimiter(rate=1 / 60, burst=3)
        self._buffers = _BufferBudget(MAX_CHUNK_BUFFERS)
        self._versions: OrderedDict[bytes, _Served] = OrderedDict()
        self._shares: dict[PeerId, _Share] = {}  # peers with an authenticated connection

    # -- trust that may change while serving -------------------------------------

    def _may(self, peer: PeerId, role: str) -> bool:
        """Whether ``peer`` holds ``role`` in the trust store as it is now."""
        known = self.home.trust.get(peer)
        return known is not None and role in known.roles

    def revoke_stale(self) -> int:
        """Close every open connection of a peer no longer in the trust store;
        returns how many were closed."""
        trust = self.home.trust
        closed = 0
        for peer, share in self._shares.items():
            scopes = share.scopes
            if trust.get(peer) is None and scopes:
                log.warning(
                    "peer no longer trusted peer=%s closing=%d connection(s)",
                    peer.short,
                    len(scopes),
                )
                for scope in scopes:
                    scope.cancel()
                closed += len(scopes)
        return closed

    async def watch_trust(self) -> None:
        """Re-check open connections whenever the trust store changes (R-63)."""
        seen = self.home.trust_file.generation
        while True:
            await trio.sleep(TRUST_RECHECK)
            self.home.trust_file.current()  # stats the file, re-reads it if changed
            if self.home.trust_file.generation != seen:
                seen = self.home.trust_file.generation
                self.revoke_stale()

    async def _served(self, root: bytes) -> _Served | None:
        """A version's chunk table, from a small server-wide cache."""
        held = self._versions.get(root)
        if held is not None:
            self._versions.move_to_end(root)
            return held
        entry = self.home.catalog.by_root(root)
        if entry is None:
            return self._partial(root)
        held = await trio.to_thread.run_sync(_Served.load, entry.envelope, entry.location)
        self._versions[root] = held
        while len(self._versions) > VERSION_CACHE:
            self._versions.popitem(last=False)
        return held

    def _partial(self, root: bytes) -> _Served | None:
        """A version this node is still pulling (never cached past its pull)."""
        partials = self.partials
        partial = partials.get(root) if partials is not None else None
        if partials is None or partial is None:
            self._partial_served.pop(root, None)
            return None
        held = self._partial_served.get(root)
        if held is None or held.have is not partial.staging.done:
            held = self._partial_served[root] = _Served.partial(partial.staging)
            for gone in [r for r in self._partial_served if partials.get(r) is None]:
                del self._partial_served[gone]
        return held

    # -- listening and connections ---------------------------------------------

    @property
    def connected_peers(self) -> int:
        return len(self._peers)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
    ) -> None:
        """Listen and serve until cancelled; reports the listeners when ready."""
        listeners = await open_listeners(host, port, "serve")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_trust)
            task_status.started(listeners)
            await trio.serve_listeners(self.handle, listeners)

    def _admit(self, source: str, relayed: bool) -> Ticket | None:
        """A pre-auth ticket (shedding the oldest waiter of a full pool), or
        None: over the source's rate or pre-auth cap (see ``admission``)."""
        now = trio.current_time()
        ticket = victim = None
        if relayed or self._per_source.allow(source, now):
            ticket, victim = self._preauth.enter(None if relayed else source, now)
        if victim is not None:
            self._shedding[victim].cancel()
            if self._log_limit.allow("shed", now):
                log.warning(
                    "pre-auth pool full: shedding the oldest waiting connection"
                    " (logged at most once a minute)"
                )
        if ticket is None and self._log_limit.allow(source, now):
            log.warning(
                "dropping connections from=%s (rate or pre-auth limit; logged at most"
                " once a minute)",
                source,
            )
        return ticket

    async def handle(self, transport: trio.abc.Stream, via: str | None = None) -> None:
        """One connection (accepted, or spliced by a relay: ``via``); never
        raises (errors end only this connection)."""
        sock = getattr(transport, "socket", None)
        host, port = via or "?", 0
        if via is None and sock is not None:
            with contextlib.suppress(OSError):
                host, port = sock.getpeername()[:2]
        addr = f"{host}:{port}"
        try:
            source = source_key(host)
            ticket = self._admit(source, relayed=via is not None)
            if ticket is None:
                with trio.move_on_after(BUSY_TIMEOUT):  # so the client retries later
                    await transport.send_all(BUSY)
            else:
                direct = via is None and sock is not None and host != "?"
                local = sock is not None and direct and _same_host(sock)
                await self._handle(transport, ticket, addr, host if direct else None, local)
        except* P2pckptError as group:
            log.info('connection ended from=%s error="%s"', addr, first_leaf(group))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.info('connection lost from=%s error="%s"', addr, first_leaf(group))
        except* trio.TooSlowError:
            log.info("connection timed out from=%s (closed)", addr)
        except* Exception as group:  # a bug must end one connection, not the server
            log.error('connection failed from=%s error="%r"', addr, first_leaf(group))
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()

    async def _handle(
        self,
        transport: trio.abc.Stream,
        ticket: Ticket,
        addr: str,
        peer_host: str | None,
        local: bool = False,
    ) -> None:
        # One deadline from accept to an authenticated peer (slowloris, R-09);
        # a newcomer to a full pool may shed us first (``admission``).
        deadline = trio.CancelScope(deadline=trio.current_time() + HANDSHAKE_TIMEOUT)
        self._shedding[ticket] = deadline
        try:
            with deadline:
                secure = await open_secure(
                    transport, self.home.key, initiator=False, receive_window=REQUEST_WINDOW
                )
            if deadline.cancelled_caught:
                raise HandshakeFailed(
                    "shed: the pre-auth pool was full" if ticket.shed else "handshake timed out"
                )
        finally:
            self._preauth.leave(ticket)
            del self._shedding[ticket]
        peer = secure.peer
        try:
            self.home.trust.require(peer)
        except TrustError as exc:
            if self._log_limit.allow(ticket.source or "relay", trio.current_time()):
                log.warning('refused connection peer=%s from=%s error="%s"', peer.short, addr, exc)
            reason = "we do not trust you (ask our owner to 'trust add' your ID)"
            await secure.send_all(encode(m.Error(m.UNAUTHORIZED, reason)))
            return
        if sum(self._peers.values()) >= MAX_CONNECTIONS or (
            self._peers[peer] >= MAX_CONNECTIONS_PER_PEER
        ):
            await secure.send_all(encode(m.Error(m.TOO_MANY_REQUESTS, "too many connections")))
            return
        self._peers[peer] += 1
        if self.sightings is not None:
            route = "direct" if peer_host is not None else "relay"
            self.sightings.saw(peer, route, addr if peer_host else "", inbound=True)
        scope = trio.CancelScope()
        share = self._shares.get(peer)
        if share is None:
            rate = self._per_peer
            share = _Share(trio.Semaphore(PEER_BUFFERS), Throttle(rate) if rate > 0 else None)
            self._shares[peer] = share
        share.scopes.add(scope)
        try:
            log.info("peer connected peer=%s from=%s", peer.short, addr)
            hint = (peer_host, 0) if peer_host is not None else None
            with scope:
                await self._converse(secure, peer, hint, share, local)
        finally:
            share.scopes.discard(scope)
            if not share.scopes:
                del self._shares[peer]
            self._peers[peer] -= 1
            if not self._peers[peer]:
                del self._peers[peer]

    async def _converse(
        self,
        secure: SecureStream,
        peer: PeerId,
        hint: tuple[str, int] | None,
        share: _Share,
        local: bool = False,
    ) -> None:
        requests_send, requests_recv = trio.open_memory_channel[m.Request](m.MAX_OUTSTANDING)
        prepared_send, prepared_recv = trio.open_memory_channel[_Prepared](PREPARED_QUEUE)
        busy = _Busy(local)
        lease = _Lease(self._buffers, share)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, secure, prepared_recv, busy, lease, share)
                nursery.start_soon(
                    self._preparer, requests_recv, prepared_send, peer, hint, busy, lease
                )
                await self._reader(secure, requests_send, busy)
                nursery.cancel_scope.cancel()
        finally:
            lease.close()
            self._serving.subtract(busy.roots)
            self._serving += Counter()  # drop the zero counts
            if busy.packed:
                log.info(
                    "packed chunks peer=%s chunks=%d packed=%d chunk_bytes=%d wire_bytes=%d",
                    peer.short,
                    busy.chunks,
                    busy.packed,
                    busy.chunk_bytes,
                    busy.wire_bytes,
                )

    def serving(self) -> set[bytes]:
        """Roots of versions some connection is reading now (or has read and
        may read again before it closes): not to be deleted under it."""
        return set(self._serving)

    async def _reader(
        self, secure: SecureStream, requests: trio.MemorySendChannel[m.Request], busy: _Busy
    ) -> None:
        reader = MessageReader(SERVER_ACCEPTS)
        async with requests:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    data = await secure.receive_some()
                if idle.cancelled_caught:
                    if busy.working:  # a long push is running for this peer: not idle
                        continue
                    raise trio.TooSlowError
                if not data:
                    return  # the peer is done; nobody is left to answer
                for msg in reader.feed(data):
                    if isinstance(msg, m.Cancel):
                        busy.cancel(msg.req_id)
                        continue
                    try:
                        requests.send_nowait(msg)  # type: ignore[arg-type]
                    except trio.WouldBlock:
                        await secure.send_all(
                            encode(m.Error(m.TOO_MANY_REQUESTS, "too many outstanding requests"))
                        )
                        raise RemoteProtocolError(
                            "peer exceeded the outstanding-request limit"
                        ) from None

    async def _preparer(
        self,
        requests: trio.MemoryReceiveChannel[m.Request],
        prepared: trio.MemorySendChannel[_Prepared],
        peer: PeerId,
        hint: tuple[str, int] | None,
        busy: _Busy,
        lease: _Lease,
    ) -> None:
        async with prepared:
            async for req in requests:
                if isinstance(req, m.PushRequest):
                    busy.working = True
                    try:
                        await self._push(peer, hint, req, prepared)
                    finally:
                        busy.working = False
                    continue
                if not self._may(peer, "pull"):
                    error = m.Error(
                        m.UNAUTHORIZED,
                        "we trust you, but not with the 'pull' role",
                        req.req_id if isinstance(req, m.ChunkRequest) else None,
                    )
                    await prepared.send((encode(error), None))
                    continue
                if not isinstance(req, m.ChunkRequest):
                    await prepared.send((await self._answer(req), None))
                    continue
                if busy.cancelled and req.req_id in busy.cancelled:
                    del busy.cancelled[req.req_id]
                    continue
                buf = await lease.acquire()
                try:
                    if req.root not in busy.roots:
                        busy.roots.add(req.root)
                        self._serving[req.root] += 1
                    payload = await self._chunk(req, buf, busy)
                except BaseException:
                    lease.release(None)  # the buffer may still be in use
                    raise
                # An Error, or a chunk packed into a frame of its own: the buffer is free.
                if isinstance(payload, bytes) or payload.obj is not buf:
                    lease.release(buf)
                    await prepared.send((payload, None))
                else:
                    await prepared.send((payload, buf))

    async def _push(
        self,
        peer: PeerId,
        hint: tuple[str, int] | None,
        req: m.PushRequest,
        out: trio.MemorySendChannel[_Prepared],
    ) -> None:
        """A peer with the push role asks us to pull a version back from it:
        PushProgress about every PUSH_PROGRESS_INTERVAL while we do, then the
        PushResult (or one Error)."""
        if self.on_push is None:
            error = m.Error(m.BAD_REQUEST, "this node takes no pushes (run 'p2pckpt daemon')")
            await out.send((encode(error), None))
            return
        try:
            self.home.trust.require(peer, "push")
        except TrustError:
            log.warning(
                'refused push name="%s" version=%d from=%s (no push role)',
                safe_display(req.name),
                req.version,
                peer.short,
            )
            error = m.Error(m.UNAUTHORIZED, "you do not have the 'push' role here")
            await out.send((encode(error), None))
            return
        target = (hint[0], req.port) if hint is not None else None
        latest: list[int] = []

        def report(done: int, total: int) -> None:
            latest[:] = [done, total]

        async def ticker() -> None:
            sent: list[int] = []
            while True:
                await trio.sleep(m.PUSH_PROGRESS_INTERVAL)
                if latest != sent:
                    sent = list(latest)
                    await out.send((encode(m.PushProgress(*sent)), None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            result = await self.on_push(peer, target, req, report)
            nursery.cancel_scope.cancel()
        await out.send((encode(result), None))

    async def _answer(self, req: m.Request) -> bytes:
        catalog = self.home.catalog
        match req:
            case m.ListRequest():
                entries = catalog.summaries()[-m.MAX_LIST_ENTRIES :]
                metas = catalog.metas()
                return encode(
                    m.ListResponse(
                        tuple(
                            m.VersionInfo(
                                e.name,
                                e.version,
                                e.publisher,
                                e.root,
                                e.total_bytes,
                                e.file_count,
                                m.list_meta(metas.get(e.root, {})),
                            )
                            for e in entries
                        )
                    )
                )
            case m.ManifestRequest(name, version):
                try:
                    validate_name(name)
                except ManifestError:
                    return encode(m.Error(m.BAD_REQUEST, "bad checkpoint name"))
                entry = catalog.find(name, version)
                partial = self.partials.find(name, version) if self.partials else None
                if partial is not None and (
                    entry is None or partial.staging.manifest.version > entry.version
                ):
                    return encode(m.ManifestResponse(partial.envelope))
                if entry is None:
                    what = name if version is None else f"{name}@{version}"
                    return encode(m.Error(m.NOT_FOUND, f"no checkpoint {what}"))
                return encode(m.ManifestResponse(entry.envelope))
            case m.HaveRequest(root):
                if catalog.by_root(root) is not None:
                    return encode(m.Have(root, True))
                partial = self.partials.get(root) if self.partials else None
                if partial is None:
                    return encode(m.Have(root, False))
                return encode(m.Have(root, False, partial.bitfield(), partial.fetching_bitfield()))
        raise RemoteProtocolError(f"unexpected request {type(req).__name__}")

    def _codec(self, req: m.ChunkRequest, busy: _Busy) -> int:
        """The codec to pack this chunk with (0: raw), by the connection's policy."""
        if not (req.accept and self.compress):
            return 0
        if busy.policy is None:  # the first request that offers codecs
            busy.policy = PackPolicy(packing.available(), local=busy.local)
        return busy.policy.choose(req.accept)

    async def _chunk(self, req: m.ChunkRequest, buf: bytearray, busy: _Busy) -> bytes | memoryview:
        """The framed chunk (a view of ``buf``, or of its packed frame), or an Error."""
        held = await self._served(req.root)
        if held is None:
            return encode(m.Error(m.NOT_FOUND, "unknown version", req.req_id))
        if req.index >= len(held.chunks):
            return encode(m.Error(m.BAD_REQUEST, "no such chunk", req.req_id))
        if held.have is not None and req.index not in held.have:
            return encode(m.Error(m.NOT_FOUND, "chunk not verified here yet", req.req_id))
        relpath, chunk = held.chunks[req.index]
        codec = self._codec(req, busy)
        path = held.file_path(relpath)
        try:
            if codec:
                framed, size, seconds = await trio.to_thread.run_sync(
                    _read_packed, path, chunk, req.req_id, buf, codec
                )
                assert busy.policy is not None
                busy.policy.packed(codec, chunk.length, size, seconds)
            else:
                framed = await trio.to_thread.run_sync(_read_chunk, path, chunk, req.req_id, buf)
        except _SourceChanged as exc:
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
        busy.chunks += 1
        busy.chunk_bytes += chunk.length
        if framed.obj is buf:
            busy.wire_bytes += chunk.length
        else:
            packed = len(framed) - CHUNK_HEADER_SIZE - 1  # less its header and codec byte
            busy.packed += 1
            busy.wire_bytes += packed
            if self.on_packed is not None:
                self.on_packed(chunk.length, packed)
        return framed

    async def _sender(
        self,
        secure: SecureStream,
        prepared: trio.MemoryReceiveChannel[_Prepared],
        busy: _Busy,
        lease: _Lease,
        share: _Share,
    ) -> None:
        """Chunk responses are memoryviews (of a pooled buffer, or of a packed
        frame); the rest bytes. A chunk whose send ends with the next response
        already waiting was paced by the link: it times the link for the
        connection's pack policy."""
        async for payload, buf in prepared:
            started = time.perf_counter()
            throttled = 0.0
            try:
                if isinstance(payload, memoryview):
                    for throttle in (share.throttle, self._throttle):
                        if throttle is not None:
                            await throttle.take(len(payload))
                    throttled = time.perf_counter() - started
                with trio.fail_after(SEND_TIMEOUT):  # bounds even a trickling reader
                    await secure.send_all(payload, stall=STALL_SECONDS)
            except BaseException:
                if buf is not None:
                    lease.release(None)
                raise
            if isinstance(payload, memoryview):
                if busy.policy is not None and prepared.statistics().current_buffer_used:
                    busy.policy.sent(len(payload), time.perf_counter() - started, throttled)
                if self.on_served is not None:
                    self.on_served(len(payload))
                payload.release()
            if buf is not None:
                lease.release(buf)
