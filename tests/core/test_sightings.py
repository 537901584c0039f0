"""Tests for p2pckpt.discovery.sightings: newest sighting per peer, bounded."""

from __future__ import annotations

from p2pckpt.discovery.sightings import Sightings
from p2pckpt.identity.peer_id import PeerId


def pid(n: int) -> PeerId:
    return PeerId(n.to_bytes(32, "big"))


def test_newest_sighting_wins() -> None:
    seen = Sightings()
    seen.saw(pid(1), "relay", "", inbound=True)
    seen.saw(pid(1), "direct", "10.0.0.2:7450", inbound=False)
    got = seen.get(pid(1))
    assert got is not None and (got.route, got.addr, got.inbound) == (
        "direct",
        "10.0.0.2:7450",
        False,
    )
    assert seen.get(pid(2)) is None


def test_bounded_forgetting_the_least_recently_seen() -> None:
    seen = Sightings(max_peers=3)
    for n in range(3):
        seen.saw(pid(n), "direct", f"h:{n}", inbound=True)
    seen.saw(pid(0), "direct", "h:0", inbound=True)  # 0 is fresh again; 1 is now oldest
    seen.saw(pid(9), "relay", "", inbound=True)
    assert len(seen) == 3
    assert seen.get(pid(1)) is None
    assert all(seen.get(pid(n)) is not None for n in (0, 2, 9))
