"""The node and client sides of the relay.

``register`` keeps a node reachable through a relay: one outbound control
connection, a proof of the node's key, and for each ``Incoming(token)`` a
new data connection that starts with ``Accept(token)`` and is then handed,
as a plain socket stream, to ``handle`` (which runs the Noise responder).
The relay sends nothing on a data connection, so there is never a leftover
on the node side. On loss of the relay the node reconnects with capped,
jittered exponential backoff, forever, until cancelled; relayed sessions
already running are not affected.

``dial`` asks the relay for a peer and returns the raw pipe. The relay is
not trusted: the caller must run the Noise handshake over the stream and
check that the proven peer is the one it asked for (``open_relayed`` does
both), so a relay that pairs us with the wrong node only gets a refusal.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import HandshakeFailed, P2pckptError, PeerUnreachable, RemoteProtocolError
from p2pckpt.identity.keys import NodeKey
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.relay import protocol as p
from p2pckpt.relay.server import FrameStream

log = logging.getLogger("p2pckpt.relay.client")

CONNECT_TIMEOUT: Final = 10.0  # TCP connect to the relay
REGISTER_TIMEOUT: Final = 10.0  # Register → Registered, as the relay allows
IDLE_TIMEOUT: Final = 300.0  # well above the relay's PING_INTERVAL; silence this long = lost
SEND_TIMEOUT: Final = 60.0
BACKOFF_MIN: Final = 1.0  # seconds before the first reconnect
BACKOFF_MAX: Final = 60.0
STABLE_AFTER: Final = 30.0  # a registration that lasted this long resets the backoff
MAX_INCOMING: Final = 64  # relayed sessions this node runs at once

Relay = tuple[str, int]
Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first returns bytes already read from ``inner``.

    It has no ``.socket``, on purpose: callers that read the socket directly
    would skip the prefix.
    """

    def __init__(self, inner: trio.SocketStream, prefix: bytes) -> None:
        self.inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _open(relay: Relay) -> trio.SocketStream:
    label = f"{relay[0]}:{relay[1]}"
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(*relay)
    except trio.TooSlowError:
        raise PeerUnreachable(f"cannot reach relay {label}: timed out") from None
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach relay {label}: {exc.strerror or exc}") from None


async def dial(relay: Relay, target: PeerId, timeout: float = 10.0) -> trio.abc.Stream:
    """A raw pipe to ``target`` through ``relay``; run the Noise initiator on it.

    Raises PeerUnreachable if the relay cannot be reached, refuses (e.g. the
    peer is not registered) or does not connect us within ``timeout``, and
    RemoteProtocolError if it answers garbage. Cancelling is safe: the
    connection is closed.
    """
    label = f"{relay[0]}:{relay[1]}"
    try:
        with trio.fail_after(timeout):
            conn = FrameStream(await _open(relay), p.CLIENT_ACCEPTS)
            try:
                await conn.send(p.Connect(target.key))
                reply = await conn.receive(p.Connected, p.Refused)
            except BaseException:
                await conn.aclose()
                raise
    except trio.TooSlowError:
        raise PeerUnreachable(f"relay {label} did not connect us to {target.short}") from None
    except (OSError, trio.BrokenResourceError, P2pckptError) as exc:
        if isinstance(exc, PeerUnreachable | RemoteProtocolError):
            raise
        raise PeerUnreachable(f"relay {label} dropped us: {exc}") from exc
    if isinstance(reply, p.Refused):
        await conn.aclose()
        raise PeerUnreachable(f"relay {label} cannot reach {target.short}: {reply.reason}")
    leftover = conn.leftover()
    return PrefixedStream(conn.stream, leftover) if leftover else conn.stream


async def open_relayed(
    relay: Relay, target: PeerId, node_key: NodeKey, timeout: float = 10.0
) -> SecureStream:
    """Dial ``target`` through ``relay`` and prove it is ``target`` (R-18).

    Raises HandshakeFailed if the peer behind the pipe is anyone else.
    """
    stream = await dial(relay, target, timeout)
    try:
        secure = await open_secure(stream, node_key, initiator=True)
        if secure.peer != target:
            raise HandshakeFailed(
                f"relay {relay[0]}:{relay[1]} connected us to {secure.peer.short},"
                f" not {target.short}"
            )
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return secure


async def register(
    relay: Relay,
    node_key: NodeKey,
    handle: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stay registered at ``relay`` until cancelled; run ``handle`` per session.

    Reports readiness once the first registration succeeded. ``handle`` gets
    each relayed stream and need not close it; its errors are logged.
    """
    label = f"{relay[0]}:{relay[1]}"
    slots = trio.Semaphore(MAX_INCOMING)
    backoff = BACKOFF_MIN
    started = False

    def registered() -> None:
        nonlocal started
        log.info("registered at relay relay=%s peer=%s", label, node_key.peer_id.short)
        if not started:
            started = True
            task_status.started()

    async with trio.open_nursery() as sessions:
        while True:
            since = trio.current_time()
            try:
                await _control(relay, node_key, handle, sessions, slots, registered)
            except (P2pckptError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                log.warning('relay connection ended relay=%s error="%s"', label, exc)
            if trio.current_time() - since >= STABLE_AFTER:
                backoff = BACKOFF_MIN
            delay = min(BACKOFF_MAX, backoff * random.uniform(0.75, 1.25))
            log.info("reconnecting to relay relay=%s delay=%.1f", label, delay)
            await trio.sleep(delay)
            backoff = min(BACKOFF_MAX, backoff * 2)


async def _control(
    relay: Relay,
    node_key: NodeKey,
    handle: Handler,
    sessions: trio.Nursery,
    slots: trio.Semaphore,
    registered: Callable[[], None],
) -> None:
    """One control connection: register, then serve it until it is lost."""
    conn = FrameStream(await _open(relay), p.NODE_ACCEPTS)
    try:
        with trio.fail_after(REGISTER_TIMEOUT):
            key = node_key.peer_id.key
            await conn.send(p.Register(key))
            challenge = await conn.receive(p.Challenge, p.Refused)
            if isinstance(challenge, p.Challenge):
                signature = node_key.sign(p.proof_message(challenge.nonce, key))
                await conn.send(p.Proof(signature))
                answer = await conn.receive(p.Registered, p.Refused)
            else:
                answer = challenge
        if isinstance(answer, p.Refused):
            raise PeerUnreachable(f"registration refused: {answer.reason}")
        registered()
        while True:
            with trio.fail_after(IDLE_TIMEOUT):
                msg = await conn.receive(p.Incoming, p.Ping, p.Pong, p.Refused)
            if isinstance(msg, p.Ping):
                with trio.fail_after(SEND_TIMEOUT):
                    await conn.send(p.Pong())
            elif isinstance(msg, p.Incoming):
                try:
                    slots.acquire_nowait()
                except trio.WouldBlock:
                    log.warning("relayed session ignored (too many relayed sessions)")
                    continue
                sessions.start_soon(_session, relay, msg.token, handle, slots)
            elif isinstance(msg, p.Refused):
                raise PeerUnreachable(f"relay ended our registration: {msg.reason}")
    finally:
        await conn.aclose()


async def _session(relay: Relay, token: bytes, handle: Handler, slots: trio.Semaphore) -> None:
    """One relayed session: a new connection, Accept(token), then ``handle``."""
    stream: trio.SocketStream | None = None
    try:
        stream = await _open(relay)
        await stream.send_all(p.encode(p.Accept(token)))
        await handle(stream)
    except Exception as exc:  # one session's failure must not end the registration
        log.info('relayed session ended error="%r"', exc)
    finally:
        slots.release()
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
