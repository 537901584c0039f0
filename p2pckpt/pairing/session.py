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
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.pairing.core import (
    MAX_MESSAGE,
    MAX_NAME,
    Inviter,
    Joiner,
    Paired,
    PairingFailed,
    error,
)
from p2pckpt.pairing.words import Code

log = logging.getLogger("p2pckpt.pair")

STEP_TIMEOUT: Final = 30.0  # each message of the conversation (the joiner's user may be asked)
CONNECT_TIMEOUT: Final = 10.0
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

    async def serve(self, listeners: list[trio.SocketListener], expires: float) -> Outcome:
        """Answer joiners until the code is used (the pairing, or why it
        failed) or ``expires`` seconds pass (PairingFailed)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
            with trio.move_on_after(expires):
                await self._done.wait()
            nursery.cancel_scope.cancel()
        if isinstance(self._result, Outcome):
            return self._result
        if isinstance(self._result, BaseException):
            raise self._result
        minutes = f"{expires / 60:g} minute(s)"
        raise PairingFailed(f"the code expired: nobody paired within {minutes}")

    async def _handle(self, tcp: trio.SocketStream) -> None:
        attempt = _Attempt()
        try:
            async with tcp:
                stream = await open_secure(tcp, self.home.key, initiator=False)
                await self._converse(_Link(stream), attempt)
        except PairingFailed as exc:
            self._finish(exc)
        except (*_BROKEN, ProtocolError, trio.TooSlowError) as exc:
            log.info('pairing connection ended error="%s"', exc)
            if attempt.spent:
                self._finish(PairingFailed(f"the pairing broke off ({exc}): the code is spent"))

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
        granted, their_name = core.accepted(await link.receive())
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


async def join(
    home: Home, code: Code, addrs: list[tuple[str, int]], name: str, call: str, decide: Decide
) -> Outcome:
    """Pair with the inviter of ``code`` at one of ``addrs`` (tried in turn
    until one knows the code's number), introducing ourselves as ``name``
    and calling it ``call`` ("": the name it gives). ``decide(peer, its
    name, roles it offers)`` returns the roles to grant back, or None to
    decline."""
    problems: list[str] = []
    for host, port in addrs:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            problems.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or 'timed out'}")
            continue
        async with tcp:
            try:
                stream = await open_secure(tcp, home.key, initiator=True)
                link = _Link(stream)
                core = Joiner(code, home.key.peer_id.key, stream.peer.key, stream.handshake_hash)
                await link.send(core.hello())
                reply = await link.receive()
            except PairingFailed as exc:
                if "refused" in str(exc) and "already used" not in str(exc):
                    problems.append(f"{host}:{port}: {exc}")
                    continue  # another invitation with another number: try the next
                raise
            except (*_BROKEN, ProtocolError, trio.TooSlowError) as exc:
                problems.append(f"{host}:{port}: {exc}")
                continue
            return await _joined(home, link, core, reply, name, call, decide)
    raise PeerUnreachable("no inviter for that code answered: " + "; ".join(problems))


async def _joined(
    home: Home, link: _Link, core: Joiner, reply: bytes, name: str, call: str, decide: Decide
) -> Outcome:
    """From the inviter's Reply on: the code was tried here, so any failure is final."""
    peer = link.stream.peer
    try:
        try:
            confirm = core.reply(reply)
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
