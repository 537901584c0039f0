"""When and by which path this node last talked to each peer.

``p2pckpt status`` shows it as "the path to each peer": a connection we
made (follow, push) or one a peer made to us, direct or through the relay.
Only authenticated peers are recorded, and at most MAX_PEERS of them (the
oldest sighting is forgotten first), so nobody can grow it without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from p2pckpt.identity.peer_id import PeerId

MAX_PEERS: Final = 4096


@dataclass(frozen=True, slots=True)
class Sighting:
    route: str  # "direct" or "relay"
    addr: str  # HOST:PORT for a direct route, else the relay's address
    inbound: bool  # the peer connected to us
    seen: float  # wall-clock seconds


class Sightings:
    """The newest sighting per peer, bounded."""

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self._max = max_peers
        self._by_peer: OrderedDict[PeerId, Sighting] = OrderedDict()

    def saw(self, peer: PeerId, route: str, addr: str, *, inbound: bool) -> None:
        self._by_peer[peer] = Sighting(route, addr, inbound, time.time())
        self._by_peer.move_to_end(peer)
        while len(self._by_peer) > self._max:
            self._by_peer.popitem(last=False)

    def get(self, peer: PeerId) -> Sighting | None:
        return self._by_peer.get(peer)

    def __len__(self) -> int:
        return len(self._by_peer)
