"""A plain pull joins the swarm (issue 17, item 2).

While ``p2pckpt pull`` runs, it serves the chunks it has verified (and
nothing else of its home) to trusted peers pulling the same version, and it
dials the trusted peers it hears of on the LAN: five people pulling one
checkpoint from a NAS trade chunks instead of each taking a whole copy
from it.

- **A listening socket of its own**, not the pull's connections: those
  lead to the seeder, and a fellow puller is reached only by a connection
  of its own; carrying chunks between pullers over the seeder's
  connections would spend the very uplink the swarm is to spare.
- **Found by mDNS**, announced like a daemon but on an ephemeral port: it
  is how nodes on one LAN find each other already. A seeder naming its
  pullers to each other would need a message older nodes reject (issue 20).
- **Only after SHARE_AFTER seconds**: a pull that ends sooner has nobody
  to serve, and should not wait for mDNS name probing (about 2 s) to end.
- **Bounded**: only peers in the trust store are dialled (R-14), each
  address a peer is heard at once per pull (a peer already a source is not
  dialled again), at most MAX_FELLOWS peers; the server admits and limits
  peers as a daemon's does, serving only the pull's own partial version.

Off with ``[discovery] mdns = false`` or ``p2pckpt pull --no-share``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from p2pckpt.config import Config, parse_addr
from p2pckpt.errors import P2pckptError, first_leaf
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.fill import Hint
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.serve import Server

if TYPE_CHECKING:
    from p2pckpt.discovery.mdns import Browser

log = logging.getLogger("p2pckpt.pull")

SHARE_AFTER: Final = 1.0  # seconds into a pull before it listens and announces
MAX_FELLOWS: Final = 32  # peers one pull dials on mDNS's say-so


@dataclass
class Sharing:
    """What a pull needs to join the swarm: the registry its server serves
    from, and ``found``, which reports the trusted peers heard of on the LAN
    (each address a peer is heard at, once) for as long as it runs."""

    home: Home
    partials: Partials = field(default_factory=Partials)
    browser: Browser | None = None
    ready: trio.Event = field(default_factory=trio.Event)  # the browser is up (or failed)

    async def found(self, add: Callable[[Hint], None]) -> None:
        await self.ready.wait()
        browser = self.browser
        if browser is None:
            return
        me = self.home.key.peer_id
        told: set[PeerId] = set()
        tried: set[Hint] = set()
        while True:
            for peer, heard in browser.peers().items():
                if peer == me or self.home.trust.get(peer) is None:
                    continue  # only trusted peers are dialled on mDNS's say-so
                if peer not in told and len(told) >= MAX_FELLOWS:
                    return
                # Every address it is heard at, each once: a record forged
                # for its ID must not hide the real one.
                for addr in heard.addrs:
                    if (peer, addr) not in tried:
                        told.add(peer)
                        tried.add((peer, addr))
                        add((peer, addr))
            await browser.changed()


@asynccontextmanager
async def sharing(home: Home, cfg: Config, enabled: bool = True) -> AsyncIterator[Sharing | None]:
    """Serve and find fellow pullers while the context is open (None: off,
    because mDNS is). A failure to listen or announce only costs the sharing."""
    if not (enabled and cfg.mdns):
        yield None
        return
    share = Sharing(home)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_share, share, cfg)
        try:
            yield share
        finally:
            nursery.cancel_scope.cancel()


async def _share(share: Sharing, cfg: Config) -> None:
    from p2pckpt.discovery.mdns import announce, open_browser

    home = share.home
    try:
        await trio.sleep(SHARE_AFTER)
        server = Server.configured(home, cfg, partials=share.partials, catalog=False)
        host, _ = parse_addr(cfg.listen, allow_zero=True)
        interfaces = list(cfg.interfaces) or None
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, 0)
            port = listeners[0].socket.getsockname()[1]
            async with open_browser(interfaces=interfaces) as browser:
                share.browser = browser
                share.ready.set()
                log.info("sharing this pull port=%d (mDNS)", port)
                await announce(home.key.peer_id, port, lambda: 0, interfaces=interfaces, brief=True)
    except* (P2pckptError, OSError) as group:  # the nursery's: one failure in a group
        log.warning('not sharing this pull with other pullers error="%s"', first_leaf(group))
    finally:
        share.ready.set()
