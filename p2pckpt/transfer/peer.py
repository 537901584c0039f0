"""A client-side connection to one peer: dial (directly or through a relay),
run the handshake, check the peer is who we meant and that we trust it,
then exchange requests and responses.

A connection remembers how it was made (``route``: "direct" or "relay") and
can ``redial`` the same way, which is how a pull opens more streams.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.config import Addr
from p2pckpt.errors import (
    Busy,
    ChannelClosed,
    HandshakeFailed,
    NotAuthorized,
    NotFound,
    P2pckptError,
    PeerUnreachable,
    RemoteError,
    RemoteProtocolError,
    SourceChanged,
    TransferError,
)
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.paths import safe_display
from p2pckpt.transfer import releases
from p2pckpt.transfer.buffers import BufferPool
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import CLIENT_ACCEPTS, MessageReader, encode
from p2pckpt.wire.features import FEATURES, LEGACY, LEGACY_RELEASE, PROTOCOL, agreed, release

log = logging.getLogger("p2pckpt.peer")

CONNECT_TIMEOUT: Final = 10.0
IDLE_TIMEOUT: Final = 60.0
HELLO_TIMEOUT: Final = 10.0  # for the server's Hello (a 0.1.0 server hangs up at once)
LEGACY_MEMORY: Final = 600.0  # seconds a peer that hung up on Hello is dialled without one
BUSY_BACKOFF: Final = 0.1  # first wait after a "busy" answer; doubles, within CONNECT_TIMEOUT


def remote_error(err: m.Error, peer: str) -> P2pckptError:
    """The local error for a peer's Error message (its text escaped, R-41)."""
    text = safe_display(err.message)
    if err.code == m.UNAUTHORIZED:
        return NotAuthorized(f"peer {peer} refused us: {text}")
    if err.code == m.NOT_FOUND:
        return NotFound(f"peer {peer}: {text}")
    if err.code == m.SOURCE_CHANGED:
        return SourceChanged(f"peer {peer}: {text}")
    return RemoteError(safe_display(err.code), text)


class PeerConnection:
    """Requests and responses over one secure stream (client side)."""

    def __init__(
        self,
        secure: SecureStream,
        label: str,
        route: str,
        redial: Callable[[], Awaitable[PeerConnection]],
        addr: str = "",
    ) -> None:
        self.secure = secure
        self.peer = secure.peer
        self.label = label
        self.route = route
        self.addr = addr  # HOST:PORT dialled: the peer's, or the relay's
        self.redial = redial
        self.buffers = BufferPool()  # a pull shares one among its connections
        self._reader = MessageReader(CLIENT_ACCEPTS, lambda size: self.buffers.get(size))
        self._pending: deque[m.Message] = deque()
        # What both sides speak (``wire/features.py``); set by ``over_stream``.
        self.features: frozenset[str] = LEGACY
        self.release = LEGACY_RELEASE

    async def send(self, msg: m.Message) -> None:
        await self.secure.send_all(encode(msg))

    @property
    def pending(self) -> bool:
        """Messages already received and parsed, waiting for ``receive``."""
        return bool(self._pending)

    async def send_many(self, msgs: list[m.Message]) -> None:
        """Send ``msgs`` in one write: one syscall (and as few records as
        fit) for a batch of requests, not one each."""
        if len(msgs) == 1:
            await self.send(msgs[0])
        elif msgs:
            await self.secure.send_all(b"".join(encode(msg) for msg in msgs))

    async def receive(
        self, idle_timeout: float = IDLE_TIMEOUT, since: float | None = None
    ) -> m.Message:
        """The next message; TransferError if none arrives within
        ``idle_timeout`` seconds of ``since`` (default: now), i.e. of when
        the caller began to wait for one."""
        start = trio.current_time() if since is None else since
        while not self._pending:
            with trio.move_on_at(start + idle_timeout) as idle:
                ready = await self.secure.receive_messages(self._reader)
            if idle.cancelled_caught:
                raise TransferError(
                    f"peer {self.label} sent nothing for {idle_timeout:.0f}s; a partial copy"
                    " is kept: run the same command again to resume"
                )
            if not ready:
                raise ChannelClosed(f"peer {self.label} closed the connection")
            self._pending.extend(r for r in ready if not isinstance(r, m.Unknown))
            if not self._pending:
                continue  # only types of a newer server: nothing we asked for
        msg = self._pending.popleft()
        if isinstance(msg, m.Error) and msg.req_id is None:
            raise remote_error(msg, self.label)
        return msg

    async def request(self, msg: m.Message) -> m.Message:
        await self.send(msg)
        return await self.receive()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.secure.aclose()


async def over_stream(
    home: Home,
    stream: trio.abc.Stream,
    label: str,
    route: str,
    expect: PeerId | None,
    redial: Callable[[], Awaitable[PeerConnection]],
    addr: str,
) -> PeerConnection:
    """Handshake over ``stream``; the peer must be ``expect`` (if given) and trusted.

    Discovery and relays only suggest where a peer is: this check is what
    makes a spoofed mDNS record or a lying relay harmless (R-13, R-16).
    """
    try:
        try:
            secure = await open_secure(stream, home.key, initiator=True)
        except HandshakeFailed as exc:
            raise HandshakeFailed(f"{label}: {exc}") from exc
        if expect is not None and secure.peer != expect:
            raise HandshakeFailed(
                f"{label} answered as {secure.peer.short}, not the expected {expect.short}"
            )
        if secure.peer != home.key.peer_id:
            home.trust.require(secure.peer)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    conn = PeerConnection(secure, f"{secure.peer.short}@{label}", route, redial, addr)
    try:
        await _hello(conn)
    except BaseException:
        await conn.aclose()
        raise
    return conn


class _HungUpOnHello(P2pckptError):
    """A 0.1.0 peer ended the connection at our Hello: dial again without."""


_legacy_until: dict[PeerId, float] = {}  # peers to dial without a Hello, until when


async def _hello(conn: PeerConnection) -> None:
    """Say what we speak and learn what the peer does (``wire/features.py``).
    A peer that hung up at our Hello is a 0.1.0 node: remembered for
    LEGACY_MEMORY seconds, and _HungUpOnHello makes the caller dial again."""
    now = trio.current_time()
    if _legacy_until.get(conn.peer, 0.0) > now:
        releases.note_legacy(conn.peer)
        return  # conn.features is LEGACY already
    try:
        await conn.send(m.Hello(PROTOCOL, release(), FEATURES))
        reply = await conn.receive(idle_timeout=HELLO_TIMEOUT)
    except (ChannelClosed, RemoteError, TransferError) as exc:
        log.info('peer answered our hello as 0.1.0 does peer=%s error="%s"', conn.label, exc)
        _legacy_until[conn.peer] = now + LEGACY_MEMORY
        raise _HungUpOnHello(str(exc)) from exc
    if not isinstance(reply, m.Hello):
        raise RemoteProtocolError(f"{conn.label} answered our hello with {type(reply).__name__}")
    _legacy_until.pop(conn.peer, None)
    conn.features = agreed(reply.features)
    conn.release = safe_display(reply.release)
    releases.note(conn.peer, conn.release, reply.protocol, conn.features)
    log.debug(
        "hello peer=%s release=%s protocol=%d features=%s",
        conn.label,
        conn.release,
        reply.protocol,
        ",".join(sorted(conn.features)),
    )


async def _dialling_again_if_legacy(
    dial: Callable[[], Awaitable[PeerConnection]],
) -> PeerConnection:
    try:
        return await dial()
    except _HungUpOnHello:
        return await dial()  # remembered as 0.1.0: no Hello this time


async def _retrying_busy(dial: Callable[[], Awaitable[PeerConnection]]) -> PeerConnection:
    """``dial`` again, with backoff, while the peer answers "busy" (it sheds
    idle connections under load, so a retry soon gets in), within
    CONNECT_TIMEOUT."""
    give_up = trio.current_time() + CONNECT_TIMEOUT
    delay = BUSY_BACKOFF
    while True:
        try:
            return await dial()
        except Busy:
            if trio.current_time() + delay > give_up:
                raise
        await trio.sleep(delay * (0.5 + random.random()))  # jittered: not in lockstep
        delay *= 2


async def connect_direct(home: Home, addr: Addr, expect: PeerId | None = None) -> PeerConnection:
    """Dial ``HOST:PORT`` over TCP (again, while the peer says it is busy)."""
    return await _retrying_busy(
        lambda: _dialling_again_if_legacy(lambda: _connect_direct(home, addr, expect))
    )


async def _connect_direct(home: Home, addr: Addr, expect: PeerId | None) -> PeerConnection:
    label = f"{addr[0]}:{addr[1]}"
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(*addr)
    except trio.TooSlowError:
        raise PeerUnreachable(f"cannot reach {label}: timed out", "timed out") from None
    except OSError as exc:
        # trio reports "all attempts failed" with the real errors in __cause__.
        causes = getattr(exc.__cause__, "exceptions", None) or [exc]
        hint = ""
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            reason, hint = "connection refused", " (is 'p2pckpt serve' running there?)"
        else:
            reason = "; ".join(getattr(c, "strerror", None) or str(c) for c in causes)
        raise PeerUnreachable(f"cannot reach {label}: {reason}{hint}", reason) from None

    async def again() -> PeerConnection:
        return await connect_direct(home, addr, expect or conn.peer)

    conn = await over_stream(home, tcp, label, "direct", expect, again, label)
    return conn


async def connect_relay(home: Home, relay: Addr, peer: PeerId) -> PeerConnection:
    """Reach ``peer`` through a relay; the Noise session runs end to end."""
    return await _retrying_busy(
        lambda: _dialling_again_if_legacy(lambda: _connect_relay(home, relay, peer))
    )


async def _connect_relay(home: Home, relay: Addr, peer: PeerId) -> PeerConnection:
    from p2pckpt.relay.client import dial  # only nodes that use a relay load it

    label = f"relay {relay[0]}:{relay[1]}"
    stream = await dial(relay, peer, timeout=CONNECT_TIMEOUT)

    async def again() -> PeerConnection:
        return await connect_relay(home, relay, peer)

    return await over_stream(home, stream, label, "relay", peer, again, f"{relay[0]}:{relay[1]}")
