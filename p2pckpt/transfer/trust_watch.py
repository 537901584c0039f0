"""Trust that may change while the seeder serves (R-63).

Each request is checked against the trust store as it is at that moment
(``may``); a change to the trust file closes the open connections of every
peer no longer trusted (``revoke_stale``) within TRUST_RECHECK (``watch``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

import trio

from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.leases import Share

log = logging.getLogger("p2pckpt.serve")

TRUST_RECHECK: Final = 0.25  # how often the trust file is looked at for open connections


def may(home: Home, peer: PeerId, role: str) -> bool:
    """Whether ``peer`` holds ``role`` in the trust store as it is now."""
    known = home.trust.get(peer)
    return known is not None and role in known.roles


def revoke_stale(home: Home, shares: Mapping[PeerId, Share]) -> int:
    """Close every open connection (``shares``: the peers with one) of a peer
    no longer in the trust store; returns how many were closed."""
    trust = home.trust
    closed = 0
    for peer, share in shares.items():
        scopes = share.scopes
        if trust.get(peer) is None and scopes:
            log.warning(
                "peer no longer trusted peer=%s closing=%d connection(s)",
                peer.short,
                len(scopes),
            )
            for scope in scopes:
                scope.cancel()
            closed += len(scopes)
    return closed


async def watch(home: Home, on_change: Callable[[], object]) -> None:
    """Call ``on_change`` whenever the trust file changes; runs until cancelled."""
    seen = home.trust_file.generation
    while True:
        await trio.sleep(TRUST_RECHECK)
        home.trust_file.current()  # stats the file, re-reads it if changed
        if home.trust_file.generation != seen:
            seen = home.trust_file.generation
            on_change()
