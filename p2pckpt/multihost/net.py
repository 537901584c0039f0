"""Multi-host publish over the authenticated channel (issue 21 item 2).

For hosts outside one torch job: the coordinator runs ``p2pckpt publish DIR
--name N --version V --gather K`` (``coordinate``), which listens on its own
port for K contributors; each other host runs ``p2pckpt publish DIR --name N
--version V --contribute-to HOST:PORT`` (``contribute``). The checks are the
pure core's (``manifest/gather.py``); this module only moves its values:

    contributor                          coordinator
    Hello (names "gather") ------------>
                           <------------ Hello (names "gather": only a coordinator does)
    GatherOffer(name, version, entries) ->  checked at once; waits for all K
                           <------------ GatherChallenge(seed, label)
    GatherProof(i, chunk bytes) x picks ->  checked
                           <------------ GatherResult(ok, message, envelope)

Only a peer trusted here with the ``publish`` role may contribute (a peer
whose versions we accept may also add its files to one we sign); any other
is dropped after the handshake. Every message is bounded by the codec's caps
and checked as untrusted; a contributor that sends garbage or is refused
fails the whole publish with its name (nothing signed), and every
contributor is told why. A contributor checks that the signed manifest
carries its entries unchanged and is signed by the key it dialled before it
records its share. The whole exchange is bounded by ``timeout``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import (
    ChannelClosed,
    ConfigError,
    HostRefused,
    P2pckptError,
    RemoteProtocolError,
    TransferError,
)
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.gather import (
    SEED_BYTES,
    Gather,
    pack_entries,
    pick_proof,
    unpack_entries,
)
from p2pckpt.manifest.manifest import FileEntry, Manifest, MetaValue
from p2pckpt.manifest.paths import safe_display
from p2pckpt.multihost.local import read_proof, record_share, sign_gathered
from p2pckpt.net.listen import open_listeners
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.trust_watch import may
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import GATHER_ACCEPTS, MessageReader, encode
from p2pckpt.wire.features import FEATURES, GATHER, PROTOCOL, release

log = logging.getLogger("p2pckpt.gather")

# What a contributor's connection can do to one exchange step: never the coordinator's end.
_LOST = (P2pckptError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)
STEP_TIMEOUT: Final = 120.0  # seconds for one answer once the exchange runs (proofs)
MAX_PENDING: Final = 64  # connections waiting for their handshake or offer at once


@dataclass
class _Contributor:
    """One contributor's connection on the coordinator."""

    peer: PeerId
    label: str
    stream: SecureStream
    reader: MessageReader
    pending: deque[m.Message] = field(default_factory=deque)

    async def receive(self, timeout: float) -> m.Message:
        with trio.fail_after(timeout):
            while not self.pending:
                ready = await self.stream.receive_messages(self.reader)
                if not ready:
                    raise ChannelClosed(f"{self.label} closed the connection")
                self.pending.extend(ready)
        return self.pending.popleft()

    async def send(self, msg: m.Message) -> None:
        await self.stream.send_all(encode(msg))


class _Coordinator:
    def __init__(self, home: Home, gather: Gather, expect: int) -> None:
        self.home = home
        self.gather = gather
        self.expect = expect
        self.contributors: list[_Contributor] = []
        self.all_in = trio.Event()
        self.failure: HostRefused | None = None
        self.done = trio.Event()
        self.slots = trio.Semaphore(MAX_PENDING)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One incoming connection: handshake, trust, Hello, offer; then held
        open until the exchange is over (``done``). Always closed at the end,
        cancelled or not."""
        try:
            await self._handle(stream)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.slots.value == 0:
            return
        async with self.slots:
            try:
                secure = await open_secure(stream, self.home.key, initiator=False)
            except P2pckptError as exc:
                log.info('gather handshake failed error="%s"', exc)
                return
        try:
            if not may(self.home, secure.peer, "publish"):
                log.warning("gather refused peer=%s (not trusted with publish)", secure.peer.short)
                return
            known = self.home.trust.get(secure.peer)
            name = known.name if known is not None else ""
            # its trusted name (unique here) and short ID, as errors name it
            label = f"{name} ({secure.peer.short})" if name else str(secure.peer)
            conn = _Contributor(secure.peer, label, secure, MessageReader(GATHER_ACCEPTS))
            try:
                hello = await conn.receive(STEP_TIMEOUT)
                if not isinstance(hello, m.Hello):
                    raise RemoteProtocolError("expected a Hello")
                await conn.send(m.Hello(PROTOCOL, release(), FEATURES))
                offer = await conn.receive(STEP_TIMEOUT)
            except _LOST as exc:
                log.info('gather dropped peer=%s error="%s"', secure.peer.short, exc)
                return
            if self.all_in.is_set() or self.failure is not None:
                await _send_quietly(conn, m.GatherResult(False, "this gathering is full or over"))
                return
            if not self._offer(conn, offer):
                await _send_quietly(conn, m.GatherResult(False, str(self.failure)))
                self.all_in.set()  # then wakes the coordinator to fail (and close this)
                return
            await self.done.wait()
        finally:
            with trio.CancelScope(shield=True):
                await secure.aclose()

    def _offer(self, conn: _Contributor, offer: m.Message) -> bool:
        """Take a contributor's entries; False (and ``failure`` set) if refused."""
        label = conn.label
        try:
            if not isinstance(offer, m.GatherOffer):
                raise HostRefused(label, f"sent {type(offer).__name__}, not its file entries")
            want = f"{self.gather.name}@{self.gather.version}"
            if (offer.name, offer.version) != (self.gather.name, self.gather.version):
                raise HostRefused(label, f"contributes to {offer.name}@{offer.version}, not {want}")
            if any(c.peer == conn.peer for c in self.contributors):
                raise HostRefused(label, "contributed twice")
            self.gather.add(label, unpack_entries(label, offer.entries))
        except HostRefused as exc:
            self.failure = exc
            return False
        self.contributors.append(conn)
        log.info(
            "contributor in peer=%s (%d of %d)",
            conn.peer.short,
            len(self.contributors),
            self.expect,
        )
        if len(self.contributors) >= self.expect:
            self.all_in.set()
        return True


async def coordinate(
    home: Home,
    root: Path | None,
    mine: Sequence[FileEntry],
    name: str,
    version: int,
    contributors: int,
    listen: tuple[str, int],
    timeout: float,
    meta: Mapping[str, MetaValue] | None = None,
    expires: int | None = None,
    on_listening: object = None,
) -> Manifest:
    """Gather ``contributors`` hosts' entries (this host's ``mine`` too, if
    any), check them, sign one manifest, hand it to every contributor and
    record this host's share. Returns the signed manifest.

    Raises:
        HostRefused: a contributor was refused (nothing signed).
        TransferError: not every contributor came within ``timeout``.
    """
    gather = Gather(name, version)
    me = f"{home.key.peer_id} (coordinator)"
    if mine:
        gather.add(me, unpack_entries(me, pack_entries(mine)))
    state = _Coordinator(home, gather, contributors)
    listeners = await open_listeners(listen[0], listen[1], "publish --gather")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, state.handle, listeners)
            if callable(on_listening):
                on_listening(listeners)
            try:
                manifest = await _run(state, home, root, mine, me, timeout, meta, expires)
            finally:
                state.done.set()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the nursery's: our own error, unwrapped
        raise _first(group) from None
    finally:
        for listener in listeners:
            await listener.aclose()
    return manifest


async def _run(
    state: _Coordinator,
    home: Home,
    root: Path | None,
    mine: Sequence[FileEntry],
    me: str,
    timeout: float,
    meta: Mapping[str, MetaValue] | None,
    expires: int | None,
) -> Manifest:
    gather = state.gather
    with trio.move_on_after(timeout) as waited:
        await state.all_in.wait()
    if waited.cancelled_caught:
        raise TransferError(
            f"{len(state.contributors)} of {state.expect} contributors came within"
            f" {timeout:.0f}s; nothing was signed"
        )
    try:
        if state.failure is not None:
            raise state.failure
        seed = os.urandom(SEED_BYTES)
        picks = gather.challenge(seed)
        failures: list[HostRefused] = []
        async with trio.open_nursery() as nursery:
            for conn in state.contributors:
                count = len(picks[conn.label])
                nursery.start_soon(_prove, gather, conn, seed, count, failures)
        if failures:
            raise failures[0]
        if mine and root is not None:
            gather.check_proof(me, read_proof(root, pick_proof(mine, seed, me)))
        manifest, envelope = sign_gathered(home, gather, meta, expires)
    except BaseExceptionGroup as group:
        failure = _first(group)
        await _tell_all(state, m.GatherResult(False, str(failure)))
        raise failure from None
    except P2pckptError as exc:
        await _tell_all(state, m.GatherResult(False, str(exc)))
        raise
    if mine and root is not None:
        record_share(home, envelope, root, mine, home.key.peer_id.key)
    else:
        home.catalog.note_seen(manifest)
    await _tell_all(state, m.GatherResult(True, "signed", envelope))
    return manifest


def _first(group: BaseExceptionGroup[BaseException]) -> P2pckptError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, P2pckptError):
            return exc
    raise group


async def _prove(
    gather: Gather, conn: _Contributor, seed: bytes, count: int, failures: list[HostRefused]
) -> None:
    """One contributor's challenge and proof; a refusal goes to ``failures``.

    Every proof a contributor sends is read, even once some host was refused
    (read, not checked): closing a connection with unread data resets it, and
    the contributor would lose the result saying why instead of reading it.
    Each message is awaited STEP_TIMEOUT at most."""
    label = conn.label
    try:
        await conn.send(m.GatherChallenge(seed, label))
        for index in range(count):  # checked one at a time: one chunk in memory per host
            msg = await conn.receive(STEP_TIMEOUT)
            if not isinstance(msg, m.GatherProof) or msg.index != index:
                raise HostRefused(label, "did not show the chunks it was asked for")
            if failures:
                continue  # refused already: drain only
            try:
                gather.check_chunk(label, index, msg.data)
            except HostRefused as exc:
                failures.append(exc)
        if not failures:
            gather.proven(label, count)
    except HostRefused as exc:
        failures.append(exc)
    except _LOST as exc:
        failures.append(HostRefused(label, f"gave no proof: {exc or type(exc).__name__}"))


async def _send_quietly(conn: _Contributor, result: m.GatherResult) -> None:
    """Best effort (10 s at most): a contributor gone is only logged."""
    try:
        with trio.move_on_after(10):
            await conn.send(result)
    except _LOST:
        log.info("contributor gone before the result peer=%s", conn.peer.short)


async def _tell_all(state: _Coordinator, result: m.GatherResult) -> None:
    for conn in state.contributors:
        await _send_quietly(conn, result)


async def contribute(
    home: Home,
    root: Path,
    mine: Sequence[FileEntry],
    name: str,
    version: int,
    addr: tuple[str, int],
    timeout: float,
) -> Manifest:
    """Send this host's entries to the coordinator at ``addr``, prove them,
    and record the signed version's share. Returns the signed manifest.

    Raises:
        TransferError: the coordinator refused (its reason), or no coordinator
            gathers there.
        ManifestError: the signed manifest lacks or changed our entries.
    """
    with trio.fail_after(timeout):
        conn = await connect_direct(home, addr)
        try:
            if GATHER not in conn.features:
                raise ConfigError(
                    f"{addr[0]}:{addr[1]} is not gathering a multi-host version"
                    " (run 'p2pckpt publish DIR --name N --version V --gather K' there)"
                )
            coordinator = conn.peer
            await conn.send(m.GatherOffer(name, version, pack_entries(mine)))
            reply = await conn.receive(idle_timeout=timeout)
            if isinstance(reply, m.GatherChallenge):
                picks = pick_proof(mine, reply.seed, reply.label)
                for index, data in enumerate(read_proof(root, picks)):
                    await conn.send(m.GatherProof(index, data))
                reply = await conn.receive(idle_timeout=timeout)
            if not isinstance(reply, m.GatherResult):
                raise RemoteProtocolError(f"expected a gather result, got {type(reply).__name__}")
            if not reply.ok:
                raise TransferError(
                    f"the coordinator signed nothing: {safe_display(reply.message)}"
                )
            return record_share(home, reply.envelope, root, mine, coordinator.key)
        finally:
            await conn.aclose()
