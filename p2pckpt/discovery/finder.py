"""Where is a peer? Static config, mDNS, relay — and connect, direct first.

Every source only suggests an address (R-13): ``connect`` accepts a
connection only if the handshake proves the peer ID it was looking for, so
a spoofed mDNS record or a relay that splices us to someone else gets a
failed handshake and nothing else. Only trusted peer IDs are ever dialled
on discovery's say-so, which bounds the dials a LAN host can trigger (R-14).

    finder = Finder(home, config, browser)      # browser: None without mDNS
    conn = await finder.connect(peer_id)        # every direct route at once, then the relay
    conns = await finder.connect_all(targets)   # addresses / IDs, or every trusted peer

A command or script that only wants connections uses the one-shot helpers:

    targets = parse_targets(["10.0.0.7:7450", "alice"], home)   # None: find peers
    conns = await connect_targets(home, config, targets)        # every one that worked
    each = await connect_each(home, config, targets)            # a connection or an error each
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from p2pckpt.config import Addr, Config, parse_addr
from p2pckpt.discovery.sightings import Sightings
from p2pckpt.errors import ConfigError, P2pckptError, PeerUnreachable
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.logs import poll_level
from p2pckpt.transfer.peer import PeerConnection, connect_direct, connect_relay

if TYPE_CHECKING:
    from p2pckpt.discovery.mdns import Browser

log = logging.getLogger("p2pckpt.discovery")

MDNS_WAIT: Final = 2.5  # how long a lookup waits for a peer's announcement
RELAY_DELAY: Final = 1.0  # direct routes get this head start over the relay
MAX_DIAL_AT_ONCE: Final = 16

Target = Addr | PeerId


def parse_target(text: str, home: Home) -> Target:
    """``HOST:PORT``, a peer ID, or the name of a trusted peer."""
    for peer in home.trust:
        if peer.name and peer.name == text:
            return peer.peer_id
    if ":" in text:
        return parse_addr(text)
    try:
        return PeerId.parse(text)
    except ConfigError:
        raise ConfigError(
            f"{text!r} is not HOST:PORT, a peer ID, or the name of a trusted peer"
        ) from None


def parse_targets(texts: Iterable[str], home: Home) -> list[Target] | None:
    """Targets given by the user (``--from``, ``--peer``, ``--to``), each as
    ``parse_target``; None when none was given, meaning: find trusted peers."""
    return [parse_target(text, home) for text in texts] or None


class Finder:
    """Resolves and dials peers for one command or daemon."""

    def __init__(self, home: Home, config: Config, browser: Browser | None = None) -> None:
        self.home = home
        self.config = config
        self.browser = browser
        self.sightings = Sightings()

    def _made(self, conn: PeerConnection) -> PeerConnection:
        self.sightings.saw(conn.peer, conn.route, conn.addr, inbound=False)
        return conn

    def _known_routes(self, peer: PeerId) -> list[Addr]:
        """Static addresses, then what mDNS has heard so far (no waiting)."""
        routes = list(self.config.static_addrs(peer))
        seen = self.browser.peers().get(peer) if self.browser is not None else None
        if seen is not None:
            routes += [a for a in seen.addrs if a not in routes]
        return routes

    async def connect(self, peer: PeerId) -> PeerConnection:
        """A verified connection to ``peer``, happy-eyeballs style (R-67).

        Every known direct address is dialled at once, and every address
        mDNS reports while we dial (or within MDNS_WAIT) is dialled too, so a
        spoofed address that accepts TCP and stays silent cannot hide the
        real one. The relay joins after RELAY_DELAY, or once every direct
        route failed, or at once if none is known and no mDNS can tell us one
        (R-18). The first connection whose handshake proves ``peer`` wins;
        the error names every route tried.
        """
        race = _Race()
        relay = self.config.relay
        relay_dialled = False
        tried: set[Addr] = set()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            while race.won is None:
                now = trio.current_time()
                for addr in self._known_routes(peer):
                    if addr not in tried:
                        tried.add(addr)
                        dial = partial(connect_direct, self.home, addr, expect=peer)
                        race.start(nursery, f"{addr[0]}:{addr[1]}", dial, self._made)
                listening = self.browser is not None and now < started + MDNS_WAIT
                if (
                    relay is not None
                    and not relay_dialled
                    and (
                        now >= started + RELAY_DELAY
                        or (tried and not race.dialling)
                        or (not tried and not listening)
                    )
                ):
                    relay_dialled = True
                    dial = partial(connect_relay, self.home, relay, peer)
                    race.start(nursery, f"relay {relay[0]}:{relay[1]}", dial, self._made)
                if not race.dialling and not listening and (relay is None or relay_dialled):
                    break
                wake = math.inf
                if relay is not None and not relay_dialled:
                    wake = started + RELAY_DELAY
                if listening:
                    wake = min(wake, started + MDNS_WAIT)
                with trio.move_on_at(wake):
                    await race.changed(self.browser)
            nursery.cancel_scope.cancel()
        if race.won is not None:
            return race.won
        if not race.errors:
            raise PeerUnreachable(
                f"no address known for {peer.short}: not seen on the LAN (mDNS), no static"
                " [[peer]] entry and no relay configured",
                "no address known",
            )
        tried_text = "; ".join(f"{route}: {why}" for route, why in race.errors.items())
        raise PeerUnreachable(
            f"cannot reach {peer.short} (tried {len(race.errors)}): {tried_text}", tried_text
        )

    async def connect_target(self, target: Target) -> PeerConnection:
        if isinstance(target, PeerId):
            return await self.connect(target)
        return self._made(await connect_direct(self.home, target))

    async def _settle(self) -> None:
        """Give mDNS up to MDNS_WAIT to hear from trusted peers (less if all did)."""
        if self.browser is None:
            return
        trusted = {p.peer_id for p in self.home.trust}
        with trio.move_on_after(MDNS_WAIT):
            while not trusted <= set(self.browser.peers()):
                await self.browser.changed()

    def candidates(self) -> list[PeerId]:
        """Trusted peers worth trying when no address is given."""
        trusted = [p.peer_id for p in self.home.trust]
        if self.config.relay is not None:
            return trusted  # the relay can reach any registered peer
        seen = set(self.browser.peers()) if self.browser is not None else set()
        static = {p.peer for p in self.config.peers}
        return [p for p in trusted if p in seen or p in static]

    def unreached(self, target: Target, error: P2pckptError) -> str:
        """One target that could not be reached, for a user: who (a trusted
        peer's name, also for an address a static [[peer]] entry gives it)
        and what failed, e.g. ``h3 (127.0.0.1:4567: connection refused)``."""
        why = error.reason if isinstance(error, PeerUnreachable) else str(error)
        if isinstance(target, PeerId):
            peer: PeerId | None = target
        else:
            why = f"{target[0]}:{target[1]}: {why}"
            peer = next((p.peer for p in self.config.peers if target in p.addrs), None)
        if peer is None:
            return why
        known = self.home.trust.get(peer)
        return f"{known.name if known is not None and known.name else peer.short} ({why})"

    async def connect_all(
        self, targets: list[Target] | None, unreached: list[str] | None = None
    ) -> list[PeerConnection]:
        """Connect to every target (or every reachable trusted peer) at once.

        Returns the connections that worked; raises if none did. Each target
        that failed is added to ``unreached`` (``Finder.unreached``), if given:
        a pull names them when no source left holds some file.
        """
        if targets is None:
            await self._settle()
            targets = list(self.candidates())
            if not targets:
                lan = (
                    "none announced itself on the LAN"
                    if self.config.mdns
                    else "LAN discovery is off ([discovery] mdns = false)"
                )
                raise PeerUnreachable(
                    f"no trusted peer found: {lan}, and no static peers or relay are"
                    " configured (or give --from)"
                )
        conns: list[PeerConnection] = []
        errors: list[P2pckptError] = []
        limit = trio.CapacityLimiter(MAX_DIAL_AT_ONCE)

        async def one(target: Target) -> None:
            async with limit:
                try:
                    conns.append(await self.connect_target(target))
                except P2pckptError as exc:
                    log.log(
                        poll_level("connect failed", str(exc)), 'connect failed error="%s"', exc
                    )
                    errors.append(exc)
                    if unreached is not None:
                        unreached.append(self.unreached(target, exc))

        try:
            async with trio.open_nursery() as nursery:
                for target in targets:
                    nursery.start_soon(one, target)
        except BaseException:
            for c in conns:
                await c.aclose()
            raise
        if not conns:
            if len(errors) == 1:
                raise errors[0]
            raise PeerUnreachable("; ".join(str(e) for e in errors))
        order = {t: i for i, t in enumerate(targets)}
        conns.sort(key=lambda c: order.get(c.peer, len(order)))
        return conns


class _Race:
    """Dials to one peer racing each other: the first proven connection wins
    (the others are closed as they finish), every failure is kept."""

    def __init__(self) -> None:
        self.won: PeerConnection | None = None
        self.errors: dict[str, str] = {}
        self.dialling = 0
        self._progress = trio.Event()

    def start(
        self,
        nursery: trio.Nursery,
        label: str,
        dial: Callable[[], Awaitable[PeerConnection]],
        made: Callable[[PeerConnection], PeerConnection],
    ) -> None:
        self.dialling += 1
        nursery.start_soon(self._attempt, label, dial, made)

    async def _attempt(
        self,
        label: str,
        dial: Callable[[], Awaitable[PeerConnection]],
        made: Callable[[PeerConnection], PeerConnection],
    ) -> None:
        try:
            conn = await dial()
        except P2pckptError as exc:
            self.errors[label] = exc.reason if isinstance(exc, PeerUnreachable) else str(exc)
        else:
            if self.won is None:
                self.won = made(conn)
            else:  # another route was first
                await conn.aclose()
        finally:
            self.dialling -= 1
            self._progress.set()
            self._progress = trio.Event()

    async def changed(self, browser: Browser | None) -> None:
        """Wait until a dial ends or mDNS hears something new."""
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[None]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, self._progress.wait)
            if browser is not None:
                nursery.start_soon(first, browser.changed)


@asynccontextmanager
async def open_finder(home: Home, config: Config, use_mdns: bool = True) -> AsyncIterator[Finder]:
    """A Finder with an mDNS browser running while it is open (if enabled)."""
    if not (use_mdns and config.mdns):
        yield Finder(home, config)
        return
    from p2pckpt.discovery.mdns import open_browser

    async with open_browser(interfaces=list(config.interfaces) or None) as browser:
        yield Finder(home, config, browser)


def _finder_for(
    home: Home, config: Config, targets: Sequence[Target] | None
) -> AbstractAsyncContextManager[Finder]:
    """``open_finder``, listening to mDNS only if needed: to resolve a peer ID
    or to discover peers (``targets`` None); addresses alone need none."""
    need_mdns = targets is None or any(not isinstance(t, tuple) for t in targets)
    return open_finder(home, config, use_mdns=need_mdns)


async def connect_targets(
    home: Home, config: Config, targets: list[Target] | None, unreached: list[str] | None = None
) -> list[PeerConnection]:
    """Connect to every target (None: every reachable trusted peer) at once;
    the connections that worked, as ``Finder.connect_all`` (which raises if
    none did, and adds each target that failed to ``unreached``)."""
    async with _finder_for(home, config, targets) as finder:
        return await finder.connect_all(targets, unreached)


async def connect_each(
    home: Home, config: Config, targets: Sequence[Target]
) -> list[PeerConnection | P2pckptError]:
    """Connect to every target at once; for each, in order, its connection or
    why there is none. On cancellation the connections made are closed."""
    out: list[PeerConnection | P2pckptError] = [PeerUnreachable("not tried")] * len(targets)
    limit = trio.CapacityLimiter(MAX_DIAL_AT_ONCE)
    async with _finder_for(home, config, targets) as finder:

        async def one(i: int, target: Target) -> None:
            async with limit:
                try:
                    out[i] = await finder.connect_target(target)
                except P2pckptError as exc:
                    out[i] = exc

        try:
            async with trio.open_nursery() as nursery:
                for i, target in enumerate(targets):
                    nursery.start_soon(one, i, target)
        except BaseException:
            for made in out:
                if isinstance(made, PeerConnection):
                    await made.aclose()
            raise
    return out
