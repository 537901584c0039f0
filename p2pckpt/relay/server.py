"""The relay: nodes register by proving their key; clients reach them by key.

Per accepted connection (one handler task; the first frame decides)::

    admission : per-source connect rate and concurrency, global cap (R-17, R-50)
    Register  : Challenge, Proof within REGISTER_TIMEOUT, then a control loop
                (reader answers Pings; writer sends Incoming tokens and Pings)
    Connect   : issue a token on the target's control connection, wait up to
                TOKEN_TTL for its Accept, answer Connected, splice
    Accept    : hand the stream to the waiting Connect handler (which owns it
                from then on) and wait until that session ends

After ``Connected``/``Accept`` the relay parses nothing: each direction
first forwards the leftover bytes read with the last control frame, then
moves bytes until EOF, which it passes on with ``shutdown(SHUT_WR)``. The
session ends when both directions are done, a socket fails, nothing moves
for SESSION_IDLE_TIMEOUT, or it passes its byte cap. Bytes move with Linux
``splice(2)`` through a pipe (socket → pipe → socket, no copy into Python),
else through one reused buffer per direction. The Noise session inside is
end to end (R-16): the relay sees ciphertext only.

Anything a peer does ends that one connection; logs about rejected input
are rate-limited per source (R-53).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

import trio

from p2pckpt.errors import (
    AuthenticationFailed,
    ChannelClosed,
    ConfigError,
    P2pckptError,
    first_leaf,
)
from p2pckpt.errors import RemoteProtocolError as Bad
from p2pckpt.identity.keys import verify_signature
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.net.listen import open_listeners
from p2pckpt.net.ratelimit import RateLimiter, source_key
from p2pckpt.relay import protocol as p
from p2pckpt.relay.splice import HAVE_SPLICE, Budget, CapReached, move_copy, move_splice

log = logging.getLogger("p2pckpt.relay")

MAX_CONNECTIONS: Final = 2048  # open sockets of every kind; a session holds two
MAX_CONNECTIONS_PER_SOURCE: Final = 128  # one NAT may hide a busy node and its clients
MAX_REGISTRATIONS: Final = 1024
MAX_PENDING_TOKENS: Final = 256  # Connects waiting for the target's Accept
MAX_PENDING_PER_NODE: Final = 32  # so one popular (or attacked) node cannot take them all
# Connects (waiting or spliced) from one source to one node: a stranger who
# knows a node's public ID cannot hold all of its relayed sessions.
MAX_SESSIONS_PER_REQUESTER: Final = 8
CONNECT_RATE: Final = 20.0  # new connections per second per source, after a burst
CONNECT_BURST: Final = 32.0
FIRST_FRAME_TIMEOUT: Final = 10.0  # slowloris: accept → first frame
REGISTER_TIMEOUT: Final = 10.0  # accept → valid Proof
PING_INTERVAL: Final = 90.0  # keepalive on quiet control connections (Syncthing)
IDLE_TIMEOUT: Final = 300.0  # control connection with nothing received
SEND_TIMEOUT: Final = 60.0  # a control frame the peer does not take in time
REFUSE_TIMEOUT: Final = 5.0  # a refusal is best effort; do not hold a slot for it
SESSION_IDLE_TIMEOUT: Final = 900.0  # spliced, no byte either way; above app timeouts
OUTBOX: Final = MAX_PENDING_PER_NODE + 8  # every Incoming fits; a Ping flood does not
RECEIVE_BYTES: Final = 4096  # control reads: a few frames plus the first pipe bytes


class FrameStream:
    """Relay control frames over one TCP stream (used by relay and node alike)."""

    def __init__(self, stream: trio.SocketStream, accepts: frozenset[type[p.Message]]) -> None:
        self.stream = stream
        self.detached = False  # another task owns (and will close) the stream
        self._reader = p.FrameReader(accepts)
        self._ready: deque[p.Message] = deque()

    async def receive(self, *expected: type[p.Message]) -> p.Message:
        """The next frame, which must be one of ``expected``. Raises ChannelClosed
        at EOF and RemoteProtocolError on anything else."""
        while not self._ready:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise ChannelClosed("connection closed")
            self._ready.extend(self._reader.feed(data))
        msg = self._ready.popleft()
        if type(msg) not in expected:
            raise Bad(f"unexpected relay {type(msg).__name__}")
        return msg

    async def send(self, msg: p.Message) -> None:
        await self.stream.send_all(p.encode(msg))

    def leftover(self) -> bytes:
        """Bytes received after a terminal frame: they belong to the pipe."""
        return self._reader.take_leftover()

    async def aclose(self) -> None:
        if not self.detached:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()


@dataclass(eq=False)
class _Node:
    peer: PeerId
    outbox: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pending: int = 0  # Connects waiting for this node's Accept


@dataclass(eq=False)
class _Pending:
    expires: float
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    data: FrameStream | None = None


@dataclass(frozen=True)
class RelayStatistics:
    connections: int
    registrations: int
    pending_tokens: int
    sessions: int


class RelayServer:
    """A relay for nodes that cannot be dialled directly.

    Args:
        bandwidth: per-session cap in bytes/s (both directions together), or None.
        session_bytes: per-session cap on bytes moved, or None.
        use_splice: move bytes with Linux ``splice(2)`` when available.
    """

    def __init__(
        self,
        bandwidth: int | None = None,
        session_bytes: int | None = None,
        *,
        connect_rate: float = CONNECT_RATE,
        connect_burst: float = CONNECT_BURST,
        ping_interval: float = PING_INTERVAL,
        idle_timeout: float = IDLE_TIMEOUT,
        use_splice: bool = HAVE_SPLICE,
    ) -> None:
        if any(cap is not None and cap < 1 for cap in (bandwidth, session_bytes)):
            raise ConfigError("relay caps must be positive")
        self.bandwidth = bandwidth
        self.session_bytes = session_bytes
        self.use_splice = use_splice and HAVE_SPLICE
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._rate = RateLimiter(connect_rate, connect_burst)
        self._log_limit = RateLimiter(rate=1 / 60, burst=5)
        self._per_source: Counter[str] = Counter()
        self._requests: Counter[tuple[str, bytes]] = Counter()  # (source, target): Connects
        self._nodes: dict[bytes, _Node] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._sessions = 0

    def statistics(self) -> RelayStatistics:
        return RelayStatistics(
            self._per_source.total(), len(self._nodes), len(self._pending), self._sessions
        )

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
    ) -> None:
        """Listen and relay until cancelled; reports the listeners when ready."""
        listeners = await open_listeners(host, port, "relay")
        task_status.started(listeners)
        await trio.serve_listeners(self.handle, listeners)  # backs off on EMFILE

    def _note(self, source: str, level: int, fmt: str, *args: object) -> None:
        """Log about one source at most a few times a minute (R-53)."""
        if self._log_limit.allow(source, trio.current_time()):
            log.log(level, fmt, *args)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One accepted connection; never raises (errors end only this connection)."""
        try:
            source = source_key(str(stream.socket.getpeername()[0]))
        except OSError:
            source = "?"
        conn = FrameStream(stream, p.RELAY_ACCEPTS)
        if not self._rate.allow(source, trio.current_time()) or (
            self._per_source[source] >= MAX_CONNECTIONS_PER_SOURCE
        ):  # a flood costs an accept and a close
            self._note(source, logging.WARNING, "dropping connections from=%s (limit)", source)
            await conn.aclose()
            return
        full = self._per_source.total() >= MAX_CONNECTIONS
        self._per_source[source] += 1
        try:
            if full:
                await _refuse(conn, "relay full")  # the explicit answer of R-17
            else:
                await self._dispatch(conn, source)
        except* CapReached:
            log.info("session reached byte cap from=%s (closed)", source)
        except* (P2pckptError, trio.TooSlowError) as group:
            self._note(
                source,
                logging.INFO,
                'connection ended from=%s error="%r"',
                source,
                first_leaf(group),
            )
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.debug('connection lost from=%s error="%r"', source, first_leaf(group))
        except* Exception as group:  # a bug must end one connection, not the relay
            self._note(
                source,
                logging.ERROR,
                'connection failed from=%s error="%r"',
                source,
                first_leaf(group),
            )
        finally:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
            await conn.aclose()

    async def _dispatch(self, conn: FrameStream, source: str) -> None:
        deadline = trio.current_time() + REGISTER_TIMEOUT
        with trio.fail_after(FIRST_FRAME_TIMEOUT):
            first = await conn.receive(p.Register, p.Connect, p.Accept)
        if isinstance(first, p.Register):
            peer = PeerId(first.peer_key)
            with trio.fail_at(deadline):
                proven = await self._prove(conn, peer)
            if proven:
                await self._control(conn, peer)
        elif isinstance(first, p.Connect):
            await self._connect(conn, PeerId(first.target_key), source)
        elif isinstance(first, p.Accept):
            await self._accept(conn, first.token)

    async def _prove(self, conn: FrameStream, peer: PeerId) -> bool:
        nonce = secrets.token_bytes(p.NONCE_SIZE)
        await conn.send(p.Challenge(nonce))
        proof = await conn.receive(p.Proof)
        assert isinstance(proof, p.Proof)
        try:
            verify_signature(peer, p.proof_message(nonce, peer.key), proof.signature)
        except AuthenticationFailed:
            await conn.send(p.Refused("bad proof"))
            raise Bad("registration with a bad proof") from None
        if peer.key not in self._nodes and len(self._nodes) >= MAX_REGISTRATIONS:
            await conn.send(p.Refused("relay full"))
            return False
        return True

    async def _control(self, conn: FrameStream, peer: PeerId) -> None:
        """A proven node: replace any older registration, then keep it alive."""
        outbox, frames = trio.open_memory_channel[bytes](OUTBOX)
        node = _Node(peer, outbox)
        old = self._nodes.get(peer.key)
        if old is not None:
            old.scope.cancel()
            log.info("peer registered again peer=%s (the older connection is closed)", peer.short)
        self._nodes[peer.key] = node
        try:
            with node.scope:
                with trio.fail_after(SEND_TIMEOUT):
                    await conn.send(p.Registered())
                log.info("peer registered peer=%s", peer.short)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._control_writer, conn, frames)
                    await self._control_reader(conn, outbox)
                    nursery.cancel_scope.cancel()
        finally:
            outbox.close()
            if self._nodes.get(peer.key) is node:
                del self._nodes[peer.key]
                log.info("peer unregistered peer=%s", peer.short)

    async def _control_reader(
        self, conn: FrameStream, outbox: trio.MemorySendChannel[bytes]
    ) -> None:
        while True:
            with trio.fail_after(self._idle_timeout):
                msg = await conn.receive(p.Ping, p.Pong)
            if isinstance(msg, p.Ping):
                try:
                    outbox.send_nowait(p.encode(p.Pong()))
                except trio.WouldBlock:
                    raise Bad("node does not read its control connection") from None

    async def _control_writer(
        self, conn: FrameStream, frames: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        while True:
            frame = p.encode(p.Ping())
            with trio.move_on_after(self._ping_interval):
                frame = await frames.receive()
            with trio.fail_after(SEND_TIMEOUT):
                await conn.stream.send_all(frame)

    async def _connect(self, conn: FrameStream, target: PeerId, source: str) -> None:
        """A client asks for ``target``: summon a data connection, then splice."""
        leftover = conn.leftover()
        key = (source, target.key)
        if self._requests[key] >= MAX_SESSIONS_PER_REQUESTER:
            self._note(
                source, logging.WARNING, "too many sessions from=%s to=%s", source, target.short
            )
            await _refuse(conn, "too many sessions from you to that peer")
            return
        self._requests[key] += 1
        try:
            await self._connect_counted(conn, target, source, leftover)
        finally:
            self._requests[key] -= 1
            if not self._requests[key]:
                del self._requests[key]

    async def _connect_counted(
        self, conn: FrameStream, target: PeerId, source: str, leftover: bytes
    ) -> None:
        pending = _Pending(trio.current_time() + p.TOKEN_TTL)
        try:
            refusal = await self._summon(self._nodes.get(target.key), pending)
            if pending.data is None:
                await _refuse(conn, refusal or "peer did not answer")
                return
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await conn.send(p.Connected())
                log.debug("relaying from=%s to=%s", source, target.short)
                self._sessions += 1
                try:
                    await self._splice(
                        conn.stream, pending.data.stream, leftover, pending.data.leftover()
                    )
                finally:
                    self._sessions -= 1
            finally:
                pending.data.detached = False
                await pending.data.aclose()
        finally:
            pending.done.set()  # releases the Accept handler

    async def _summon(self, node: _Node | None, pending: _Pending) -> str | None:
        """Send ``node`` a fresh token and wait until TOKEN_TTL for its Accept;
        returns why not (or None: ``pending.data`` is the data connection)."""
        if node is None:
            return "not registered"
        if len(self._pending) >= MAX_PENDING_TOKENS:
            return "relay full"
        if node.pending >= MAX_PENDING_PER_NODE:
            return "peer busy"
        token = secrets.token_bytes(p.TOKEN_SIZE)
        self._pending[token] = pending
        node.pending += 1
        try:
            node.outbox.send_nowait(p.encode(p.Incoming(token)))
            with trio.move_on_at(pending.expires):
                await pending.ready.wait()
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return "peer busy"
        finally:
            del self._pending[token]  # single use: taken, expired or abandoned
            node.pending -= 1
        return None

    async def _accept(self, conn: FrameStream, token: bytes) -> None:
        """A node's data connection: hand it to the waiting Connect handler."""
        pending = self._pending.get(token)
        if pending is None or pending.data is not None:
            raise Bad("unknown or used relay token")
        conn.detached = True  # the Connect handler owns (and closes) the stream now
        pending.data = conn
        pending.ready.set()
        await pending.done.wait()

    async def _splice(
        self, a: trio.SocketStream, b: trio.SocketStream, to_b: bytes, to_a: bytes
    ) -> None:
        budget = Budget(self.bandwidth, self.session_bytes)
        with trio.CancelScope(deadline=trio.current_time() + SESSION_IDLE_TIMEOUT) as idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, a, b, to_b, budget, idle)
                nursery.start_soon(self._pump, b, a, to_a, budget, idle)
        if idle.cancelled_caught:
            log.info("relayed session idle seconds=%.0f (closed)", SESSION_IDLE_TIMEOUT)

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        first: bytes,
        budget: Budget,
        idle: trio.CancelScope,
    ) -> None:
        """One direction: ``first``, then everything from ``src``; then half-close."""
        if first:
            await budget.spend(len(first))
            await dst.send_all(first)
        spliced = self.use_splice and await move_splice(
            src.socket, dst.socket, budget, idle, SESSION_IDLE_TIMEOUT
        )
        if not spliced:
            await move_copy(src, dst, budget, idle, SESSION_IDLE_TIMEOUT)
        with contextlib.suppress(OSError):
            dst.socket.shutdown(socket.SHUT_WR)


async def _refuse(conn: FrameStream, reason: str) -> None:
    with trio.move_on_after(REFUSE_TIMEOUT):
        await conn.send(p.Refused(reason))
