"""Pairing over the network: the trio layer around ``pairing/core.py``.

The inviter listens on its own port (``pair --listen``) and announces the
code's number over mDNS; the joiner finds it there, or is given
``--from HOST:PORT``. Both run the usual Noise handshake first (each learns
the other's proven identity key and the handshake hash), then the core's
conversation inside it, one length-prefixed message at a time, each step
bounded by STEP_TIMEOUT. Several joiners may connect at once; the first
Hello naming the code's number spends the code, and every later one is
refused. The inviter stops at the first pairing, right or wrong.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import (
    ChannelClosed,
    HandshakeFailed,
    PeerUnreachable,
    ProtocolError,
    RemoteProtocolError,
)
from p2pckpt.home import Home
from p2pckpt.identity.keys import NodeKey
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.pairing.core import (
    MAX_MESSAGE,
    MAX_NAME,
    Inviter,
    Joiner,
    NotThisInvitation,
    Paired,
    PairingFailed,
    error,
)
from p2pckpt.pairing.words import Code

log = logging.getLogger("p2pckpt.pair")

SLOT_CONTEXT: Final = b"p2pckpt pair relay slot v1\x00"
STEP_TIMEOUT: Final = 30.0  # each message of the conversation, but for the joiner's answer
DECIDE_TIMEOUT: Final = 300.0  # the joiner's user reads both IDs and answers
CONNECT_TIMEOUT: Final = 10.0
MAX_CONNECTIONS: Final = 16  # answered at once by an inviter (each for seconds at most)
_LEN: Final = struct.Struct(">H")
_BROKEN = (
    ChannelClosed,
    HandshakeFailed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


@dataclass(frozen=True)
class Outcome:
    """A finished pairing: the other node and what each side granted."""

    peer: PeerId
    paired: Paired


class _Link:
    """Length-prefixed pairing messages over a secure stream."""

    def __init__(self, stream: SecureStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def send(self, data: bytes) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            await self.stream.send_all(_LEN.pack(len(data)) + data)

    async def receive(self, timeout: float = STEP_TIMEOUT) -> bytes:
        with trio.fail_after(timeout):
            while True:
                if len(self._buf) >= _LEN.size:
                    (n,) = _LEN.unpack_from(self._buf)
                    if n > MAX_MESSAGE:
                        raise RemoteProtocolError("pairing message too large")
                    if len(self._buf) >= _LEN.size + n:
                        data = bytes(self._buf[_LEN.size : _LEN.size + n])
                        del self._buf[: _LEN.size + n]
                        return data
                got = await self.stream.receive_some()
                if not len(got):
                    raise ChannelClosed("the other side hung up")
                self._buf += got
                if len(self._buf) > _LEN.size + MAX_MESSAGE:
                    raise RemoteProtocolError("pairing message too large")


class Invitation:
    """One code, waiting for its joiner on ``listeners``."""

    def __init__(
        self, home: Home, code: Code, roles: frozenset[str], name: str, call: str = ""
    ) -> None:
        self.home = home
        self.code = code
        self.roles = roles
        self.name = name  # how we introduce ourselves
        self.call = call  # what we call the joiner ("": the name it gives)
        self.claimed = False
        self._result: Outcome | BaseException | None = None
        self._done = trio.Event()
        self._open = 0  # connections being answered

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        expires: float,
        relay: tuple[str, int] | None = None,
        on_relay: Callable[[], None] = lambda: None,
    ) -> Outcome:
        """Answer joiners (on ``listeners``, and at the code's slot at
        ``relay``; ``on_relay()`` once registered there) until the code is
        used (the pairing, or why it failed) or ``expires`` seconds pass
        (PairingFailed)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
            if relay is not None:
                nursery.start_soon(self._at_relay, relay, on_relay)
            with trio.move_on_after(expires):
                await self._done.wait()
            nursery.cancel_scope.cancel()
        if isinstance(self._result, Outcome):
            return self._result
        if isinstance(self._result, BaseException):
            raise self._result
        minutes = f"{expires / 60:g} minute(s)"
        raise PairingFailed(f"the code expired: nobody paired within {minutes}")

    async def _at_relay(self, relay: tuple[str, int], on_relay: Callable[[], None]) -> None:
        """Hold the code's slot at ``relay`` (re-registering if the relay
        drops us) until cancelled."""
        from p2pckpt.relay.client import register

        async with trio.open_nursery() as nursery:
            await nursery.start(register, relay, slot_key(self.code.nameplate), self._handle)
            on_relay()

    async def _handle(self, transport: trio.abc.Stream) -> None:
        if self._open >= MAX_CONNECTIONS:  # someone floods the port: they wait their turn
            await transport.aclose()
            return
        self._open += 1
        attempt = _Attempt()
        try:
            async with transport:
                stream = await open_secure(transport, self.home.key, initiator=False)
                await self._converse(_Link(stream), attempt)
        except PairingFailed as exc:
            if attempt.spent:  # the code was tried here: the invitation ends with it
                self._finish(exc)
            else:  # e.g. an "error" before any Hello: that stranger cannot end it for us
                log.info('pairing connection ended error="%s"', exc)
        except (*_BROKEN, ProtocolError, trio.TooSlowError) as exc:
            log.info('pairing connection ended error="%s"', exc)
            if attempt.spent:
                self._finish(PairingFailed(f"the pairing broke off ({exc}): the code is spent"))
        finally:
            self._open -= 1

    async def _converse(self, link: _Link, attempt: _Attempt) -> None:
        peer = link.stream.peer
        core = Inviter(self.code, peer.key, self.home.key.peer_id.key, link.stream.handshake_hash)
        hello = await link.receive()
        if self.claimed:  # another joiner already tried the code
            await link.send(error("this code was already used"))
            return
        reply = core.hello(hello)
        if not core.spent:
            await link.send(reply)  # another number: refused, the code stays good
            return
        self.claimed = attempt.spent = True
        await link.send(reply)
        try:
            offer = core.confirm(await link.receive(), self.roles, self.name)
        except PairingFailed:
            await _try_send(link, error("wrong code"))
            raise
        await link.send(offer)
        granted, their_name = core.accepted(await link.receive(DECIDE_TIMEOUT))
        pinned = pin(self.home, peer, self.call or their_name, self.roles)
        await _try_send(link, core.done())  # pinned here, whatever happens to this message
        self._finish(Outcome(peer, Paired(pinned, self.roles, granted)))

    def _finish(self, result: Outcome | BaseException) -> None:
        if self._result is None:
            self._result = result
        self._done.set()


@dataclass
class _Attempt:
    spent: bool = False  # this connection tried the code


def pin(home: Home, peer: PeerId, name: str, roles: frozenset[str]) -> str:
    """Trust ``peer`` with ``roles`` (added to any it had) under ``name``
    (made unique among our names; a peer already named keeps its name).
    Returns the name it has now."""
    store = home.trust
    old = store.get(peer)
    if old is not None and old.name:
        name = old.name
    else:
        taken = {p.name for p in store if p.peer_id != peer}
        base = name or peer.short
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base[: MAX_NAME - 4]}-{n}"
    store.add(peer, name, (old.roles if old else frozenset()) | roles)
    home.save_trust(store)
    return name


async def _try_send(link: _Link, data: bytes) -> None:
    try:
        await link.send(data)
    except (*_BROKEN, trio.TooSlowError):
        pass


Decide = Callable[[PeerId, str, frozenset[str]], Awaitable[frozenset[str] | None]]
Dialer = Callable[[], Awaitable[trio.abc.Stream]]


def direct(host: str, port: int) -> tuple[str, Dialer]:
    """A way to reach an inviter: TCP to ``host:port``."""

    async def dial() -> trio.abc.Stream:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(host, port)

    return f"{host}:{port}", dial


def through_relay(relay: tuple[str, int], code: Code) -> tuple[str, Dialer]:
    """A way to reach an inviter: its slot at ``relay`` (``slot_key``)."""
    from p2pckpt.relay.client import dial as dial_relay

    async def dial() -> trio.abc.Stream:
        return await dial_relay(relay, slot_key(code.nameplate).peer_id, CONNECT_TIMEOUT)

    return f"relay {relay[0]}:{relay[1]}", dial


def slot_key(nameplate: int) -> NodeKey:
    """The key an invitation registers at a relay under, so that a joiner
    who knows only the code's number can ask the relay for it. Derived from
    the number alone, so it is public, not a secret: it is a meeting place.
    Anyone may take a slot (the relay keeps the last to register), which
    can only make an attempt fail: the pairing itself runs end to end in
    the Noise channel with the real node keys, and the code still guards it."""
    import nacl.signing

    seed = hashlib.sha256(SLOT_CONTEXT + str(nameplate).encode()).digest()
    return NodeKey(nacl.signing.SigningKey(seed))


async def join(
    home: Home, code: Code, ways: list[tuple[str, Dialer]], name: str, call: str, decide: Decide
) -> Outcome:
    """Pair with the inviter of ``code`` reached one of ``ways`` (tried in
    turn until one knows the code's number), introducing ourselves as
    ``name`` and calling it ``call`` ("": the name it gives).
    ``decide(peer, its name, roles it offers)`` returns the roles to grant
    back, or None to decline."""
    problems: list[str] = []
    for label, dial in ways:
        try:
            transport = await dial()
        except (OSError, trio.TooSlowError, PeerUnreachable, ProtocolError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
            problems.append(f"{label}: {reason}")
            continue
        async with transport:
            try:
                stream = await open_secure(transport, home.key, initiator=True)
                link = _Link(stream)
                core = Joiner(code, home.key.peer_id.key, stream.peer.key, stream.handshake_hash)
                await link.send(core.hello())
                reply = await link.receive()
            except (*_BROKEN, ProtocolError, trio.TooSlowError) as exc:
                problems.append(f"{label}: {exc}")
                continue
            try:
                return await _joined(home, link, core, reply, name, call, decide)
            except NotThisInvitation as exc:  # another number: nothing tried, next address
                problems.append(f"{label}: {exc}")
    raise PeerUnreachable("no inviter for that code answered: " + "; ".join(problems))


async def _joined(
    home: Home, link: _Link, core: Joiner, reply: bytes, name: str, call: str, decide: Decide
) -> Outcome:
    """From the inviter's Reply on: the code was tried here, so any failure is final."""
    peer = link.stream.peer
    try:
        try:
            confirm = core.reply(reply)
        except NotThisInvitation:
            raise  # nothing was tried here
        except PairingFailed:
            await _try_send(link, error("wrong code"))
            raise
        await link.send(confirm)
        offered, their_name = core.offer(await link.receive())
        granted = await decide(peer, their_name, offered)
        if granted is None:
            await _try_send(link, error("the joiner declined"))
            raise PairingFailed("declined: nothing was pinned on either side")
        await link.send(core.accept(granted, name))
        core.done(await link.receive())
    except (*_BROKEN, ProtocolError, trio.TooSlowError) as exc:
        raise PairingFailed(f"the pairing broke off ({exc}); start again") from exc
    pinned = pin(home, peer, call or their_name, granted)
    return Outcome(peer, Paired(pinned, granted, offered))
