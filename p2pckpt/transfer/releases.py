"""Which release each peer runs, as far as this process has heard (issue 20).

Filled from Hello exchanges in both directions (``peer.py`` as a client,
``pipeline.py`` as a server); a peer that said no Hello is 0.1.0. Read by
``status`` and ``ls`` so an operator sees which nodes of a fleet still run
an old release. Bounded: the oldest entries go first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from p2pckpt.identity.peer_id import PeerId
from p2pckpt.wire.features import LEGACY, LEGACY_RELEASE

MAX_PEERS: Final = 4096


@dataclass(frozen=True, slots=True)
class Spoken:
    """What a peer said it speaks (protocol None: it said nothing, as 0.1.0)."""

    release: str
    protocol: int | None
    features: frozenset[str]
    seen: float  # time.time() of the last exchange


_seen: dict[PeerId, Spoken] = {}


def note(peer: PeerId, release: str, protocol: int | None, features: frozenset[str]) -> Spoken:
    spoken = Spoken(release, protocol, features, time.time())
    _seen.pop(peer, None)
    _seen[peer] = spoken  # newest last
    while len(_seen) > MAX_PEERS:
        del _seen[next(iter(_seen))]
    return spoken


def note_legacy(peer: PeerId) -> Spoken:
    return note(peer, LEGACY_RELEASE, None, LEGACY)


def heard(peer: PeerId) -> Spoken | None:
    return _seen.get(peer)
