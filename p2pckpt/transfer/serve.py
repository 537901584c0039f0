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
    preparer  : answer List/Manifest/Have (``answers``) and pushes
                (``push_serve``); for a chunk, lease a buffer (``leases``),
                read + re-hash it in a worker thread (a file changed after
                publishing is caught there, R-31) and pack it there too when
                the connection's ``PackPolicy`` says it pays (``chunk_serve``)
    sender    : encrypt and send prepared responses in order, give the
                buffer back; time how fast the link takes chunks

Limits (R-50): pre-auth connections per source and in total (and relayed),
authenticated connections per peer and in total, outstanding requests,
chunk buffers for the whole server (memory stays bounded however many peers
pull) and per peer, upload rate per peer, stall, send and idle timeouts. Any
error ends that one connection and is logged; nothing a peer does ends the
server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

import trio

from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT, SecureStream, open_secure
from p2pckpt.errors import (
    HandshakeFailed,
    P2pckptError,
    RemoteProtocolError,
    TrustError,
    first_leaf,
)
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.admission import PreAuth, Ticket
from p2pckpt.transfer.answers import answer
from p2pckpt.transfer.chunk_serve import Chunks, Packing
from p2pckpt.transfer.leases import MAX_CHUNK_BUFFERS as MAX_CHUNK_BUFFERS
from p2pckpt.transfer.leases import PEER_BUFFERS as PEER_BUFFERS
from p2pckpt.transfer.leases import BufferBudget, Lease, Share
from p2pckpt.transfer.listen import open_listeners
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.push_serve import PushHandler as PushHandler
from p2pckpt.transfer.push_serve import serve_push
from p2pckpt.transfer.ratelimit import RateLimiter, source_key
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import SERVER_ACCEPTS, MessageReader, encode

log = logging.getLogger("p2pckpt.serve")

BUSY: Final = b"\x00\x00"  # an empty handshake frame: "busy, retry shortly"
BUSY_TIMEOUT: Final = 1.0  # a refusal is best effort
MAX_CONNECTIONS: Final = 128
MAX_CONNECTIONS_PER_PEER: Final = 16
IDLE_TIMEOUT: Final = 300.0
SEND_TIMEOUT: Final = 60.0
# A connection whose peer does not take STALL_SLICE bytes within STALL_SECONDS
# (under ~50 KB/s, after the kernel's buffers filled) is not reading: dropped,
# so its buffers serve others.
STALL_SECONDS: Final = 5.0
TRUST_RECHECK: Final = 0.25  # how often the trust file is looked at for open connections
PREPARED_QUEUE: Final = 2
REQUEST_WINDOW: Final = 64 * 1024

_Prepared = tuple[bytes | memoryview, bytearray | None]  # (response, its leased buffer)


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
    versions it has been reading (so retention spares them), and its packing."""

    def __init__(self, pack: Packing) -> None:
        self.working = False
        self.roots: set[bytes] = set()
        self.cancelled: OrderedDict[int, None] = OrderedDict()
        self.pack = pack

    def cancel(self, req_id: int) -> None:
        """Skip ``req_id`` if it is still queued (bounded: old ids are forgotten)."""
        self.cancelled[req_id] = None
        while len(self.cancelled) > 2 * m.MAX_OUTSTANDING:
            self.cancelled.popitem(last=False)


class Server:
    """Serves one home's catalog to trusted peers.

    Args:
        home: the node (key, trust store as it is at each decision, catalog).
        on_push: pulls what a pusher asks for; None: this node takes no pushes.
        upload: upload cap for the whole server, bytes/s (0: none).
        compress: pack chunks where it pays (``[transfer] compress``).
        per_peer: upload cap per peer, bytes/s (0: none).
        partials: versions being pulled here, served as they verify (swarm).
        on_connect: told (peer, route "direct"/"relay", address or "") for
            each authenticated connection (the daemon's sightings).
        on_served: told the size of each chunk frame sent (metrics).
        on_packed: told (chunk bytes, wire bytes) of each packed chunk (metrics).
    """

    def __init__(
        self,
        home: Home,
        on_push: PushHandler | None = None,
        upload: int = 0,
        *,
        compress: bool = True,
        per_peer: int = 0,
        partials: Partials | None = None,
        on_connect: Callable[[PeerId, str, str], None] | None = None,
        on_served: Callable[[int], None] | None = None,
        on_packed: Callable[[int, int], None] | None = None,
    ) -> None:
        self.home = home
        self._on_push = on_push
        self._throttle = Throttle(upload) if upload > 0 else None
        self._per_peer = per_peer
        self._compress = compress
        self._partials = partials
        self._on_connect = on_connect
        self._on_served = on_served
        self._chunks = Chunks(home.catalog, partials, on_packed)
        self._preauth = PreAuth()
        self._shedding: dict[Ticket, trio.CancelScope] = {}
        self._peers: Counter[PeerId] = Counter()
        self._serving: Counter[bytes] = Counter()
        self._per_source = RateLimiter()
        self._log_limit = RateLimiter(rate=1 / 60, burst=3)
        self._buffers = BufferBudget(MAX_CHUNK_BUFFERS)
        self._shares: dict[PeerId, Share] = {}  # peers with an authenticated connection

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

    # -- listening and connections ---------------------------------------------

    @property
    def connected_peers(self) -> int:
        return len(self._peers)

    def serving(self) -> set[bytes]:
        """Roots of versions some connection is reading now (or has read and
        may read again before it closes): not to be deleted under it."""
        return set(self._serving)

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
                secure = await self._handshake(transport, ticket)
                if await self._accept_peer(secure, ticket, addr):
                    await self._attend(secure, addr, host if direct else None, local)
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

    async def _handshake(self, transport: trio.abc.Stream, ticket: Ticket) -> SecureStream:
        """One deadline from accept to an authenticated peer (slowloris, R-09);
        a newcomer to a full pool may shed us first (``admission``)."""
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
        return secure

    async def _accept_peer(self, secure: SecureStream, ticket: Ticket, addr: str) -> bool:
        """Whether the authenticated peer is trusted and under the connection
        limits; if not, it has been told why (one Error)."""
        peer = secure.peer
        try:
            self.home.trust.require(peer)
        except TrustError as exc:
            if self._log_limit.allow(ticket.source or "relay", trio.current_time()):
                log.warning('refused connection peer=%s from=%s error="%s"', peer.short, addr, exc)
            reason = "we do not trust you (ask our owner to 'trust add' your ID)"
            await secure.send_all(encode(m.Error(m.UNAUTHORIZED, reason)))
            return False
        if sum(self._peers.values()) >= MAX_CONNECTIONS or (
            self._peers[peer] >= MAX_CONNECTIONS_PER_PEER
        ):
            await secure.send_all(encode(m.Error(m.TOO_MANY_REQUESTS, "too many connections")))
            return False
        return True

    async def _attend(
        self, secure: SecureStream, addr: str, peer_host: str | None, local: bool
    ) -> None:
        """Count the connection against its peer (and its share) while it lasts."""
        peer = secure.peer
        self._peers[peer] += 1
        if self._on_connect is not None:
            route = "direct" if peer_host is not None else "relay"
            self._on_connect(peer, route, addr if peer_host else "")
        scope = trio.CancelScope()
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = Share.for_peer(self._per_peer)
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
        share: Share,
        local: bool = False,
    ) -> None:
        requests_send, requests_recv = trio.open_memory_channel[m.Request](m.MAX_OUTSTANDING)
        prepared_send, prepared_recv = trio.open_memory_channel[_Prepared](PREPARED_QUEUE)
        busy = _Busy(Packing(local=local, enabled=self._compress))
        lease = Lease(self._buffers, share)
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
            pack = busy.pack
            if pack.packed:
                log.info(
                    "packed chunks peer=%s chunks=%d packed=%d chunk_bytes=%d wire_bytes=%d",
                    peer.short,
                    pack.chunks,
                    pack.packed,
                    pack.chunk_bytes,
                    pack.wire_bytes,
                )

    # -- one connection's pipeline: reader -> preparer -> sender ----------------

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
        lease: Lease,
    ) -> None:
        async def send(data: bytes) -> None:
            await prepared.send((data, None))

        async with prepared:
            async for req in requests:
                if isinstance(req, m.PushRequest):
                    busy.working = True
                    try:
                        await serve_push(self.home, self._on_push, peer, hint, req, send)
                    finally:
                        busy.working = False
                    continue
                if not self._may(peer, "pull"):
                    error = m.Error(
                        m.UNAUTHORIZED,
                        "we trust you, but not with the 'pull' role",
                        req.req_id if isinstance(req, m.ChunkRequest) else None,
                    )
                    await send(encode(error))
                    continue
                if not isinstance(req, m.ChunkRequest):
                    await send(encode(answer(req, self.home.catalog, self._partials)))
                    continue
                if busy.cancelled and req.req_id in busy.cancelled:
                    del busy.cancelled[req.req_id]
                    continue
                buf = await lease.acquire()
                try:
                    if req.root not in busy.roots:
                        busy.roots.add(req.root)
                        self._serving[req.root] += 1
                    payload = await self._chunks.prepare(req, buf, busy.pack)
                except BaseException:
                    lease.release(None)  # the buffer may still be in use
                    raise
                # An Error, or a chunk packed into a frame of its own: the buffer is free.
                if isinstance(payload, bytes) or payload.obj is not buf:
                    lease.release(buf)
                    await prepared.send((payload, None))
                else:
                    await prepared.send((payload, buf))

    async def _sender(
        self,
        secure: SecureStream,
        prepared: trio.MemoryReceiveChannel[_Prepared],
        busy: _Busy,
        lease: Lease,
        share: Share,
    ) -> None:
        """Chunk responses are memoryviews (of a pooled buffer, or of a packed
        frame); the rest bytes. A chunk whose send ends with the next response
        already waiting was paced by the link: it times the link for the
        connection's pack policy."""
        pack = busy.pack
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
                if pack.policy is not None and prepared.statistics().current_buffer_used:
                    pack.policy.sent(len(payload), time.perf_counter() - started, throttled)
                if self._on_served is not None:
                    self._on_served(len(payload))
                payload.release()
            if buf is not None:
                lease.release(buf)
