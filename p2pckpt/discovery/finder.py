"""Where is a peer? Static config, mDNS, relay — and connect, direct first.

Every source only suggests an address (R-13): ``connect`` accepts a
connection only if the handshake proves the peer ID it was looking for, so
a spoofed mDNS record or a relay that splices us to someone else gets a
failed handshake and nothing else. Only trusted peer IDs are ever dialled
on discovery's say-so, which bounds the dials a LAN host can trigger (R-14).

    finder = Finder(home, config, browser)      # browser: None without mDNS
    conn = await finder.connect(peer_id)        # direct routes, then the relay
    conns = await finder.connect_all(targets)   # addresses / IDs, or every trusted peer
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import trio

from p2pckpt.config import Addr, Config, parse_addr
from p2pckpt.discovery.sightings import Sightings
from p2pckpt.errors import ConfigError, P2pckptError, PeerUnreachable
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.peer import PeerConnection, connect_direct, connect_relay

if TYPE_CHECKING:
    from p2pckpt.discovery.mdns import Browser

log = logging.getLogger("p2pckpt.discovery")

MDNS_WAIT: Final = 2.5  # how long a lookup waits for a peer's announcement
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

    async def direct_routes(self, peer: PeerId, wait: float = MDNS_WAIT) -> list[Addr]:
        """Static addresses first, then what mDNS has heard (waiting briefly)."""
        routes = list(self.config.static_addrs(peer))
        if self.browser is not None:
            seen = self.browser.peers().get(peer)
            if seen is None and not routes:
                seen = await self.browser.wait_for(peer, wait)
            if seen is not None:
                routes += [a for a in seen.addrs if a not in routes]
        return routes

    async def connect(self, peer: PeerId) -> PeerConnection:
        """A verified connection to ``peer``: each direct route, then the relay."""
        errors: list[str] = []
        for addr in await self.direct_routes(peer):
            try:
                return self._made(await connect_direct(self.home, addr, expect=peer))
            except P2pckptError as exc:
                errors.append(str(exc))
        if self.config.relay is not None:
            try:
                return self._made(await connect_relay(self.home, self.config.relay, peer))
            except P2pckptError as exc:
                errors.append(str(exc))
        if not errors:
            raise PeerUnreachable(
                f"no address known for {peer.short}: not seen on the LAN (mDNS), no static"
                " [[peer]] entry and no relay configured"
            )
        raise PeerUnreachable(f"cannot reach {peer.short}: " + "; ".join(errors))

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

    async def connect_all(self, targets: list[Target] | None) -> list[PeerConnection]:
        """Connect to every target (or every reachable trusted peer) at once.

        Returns the connections that worked; raises if none did.
        """
        if targets is None:
            await self._settle()
            targets = list(self.candidates())
            if not targets:
                raise PeerUnreachable(
                    "no trusted peer found: none announced itself on the LAN, and no static"
                    " peers or relay are configured (or give --from)"
                )
        conns: list[PeerConnection] = []
        errors: list[P2pckptError] = []
        limit = trio.CapacityLimiter(MAX_DIAL_AT_ONCE)

        async def one(target: Target) -> None:
            async with limit:
                try:
                    conns.append(await self.connect_target(target))
                except P2pckptError as exc:
                    log.info('connect failed error="%s"', exc)
                    errors.append(exc)

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


@asynccontextmanager
async def open_finder(home: Home, config: Config, use_mdns: bool = True) -> AsyncIterator[Finder]:
    """A Finder with an mDNS browser running while it is open (if enabled)."""
    if not (use_mdns and config.mdns):
        yield Finder(home, config)
        return
    from p2pckpt.discovery.mdns import open_browser

    async with open_browser(interfaces=list(config.interfaces) or None) as browser:
        yield Finder(home, config, browser)
