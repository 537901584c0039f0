"""Wait until K trusted peers hold a verified copy of a version.

A training job deletes a checkpoint only once it is safe elsewhere. A peer
counts as a replica when it answers ``HaveRequest(root)`` with ``complete``:
the version is in its catalog, which only happens after every chunk was
verified against the signed manifest. Trusted peers are found as for a pull
(static ``[[peer]]`` entries, mDNS, relay) and asked about once a second
until enough hold it or the time is up; the publisher's own node never
counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from p2pckpt.config import Config
from p2pckpt.discovery.finder import Finder, open_finder
from p2pckpt.errors import ConfigError, P2pckptError, ReplicasMissing
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.wire import messages as m
from p2pckpt.wire.bitfield import bitfield_to_int

log = logging.getLogger("p2pckpt.replicas")

POLL_SECONDS: Final = 1.0
ASK_TIMEOUT: Final = 10.0  # one peer's connect + answer
MAX_BACKOFF: Final = 16.0  # an unreachable peer is asked again at most this late
HOLDS: Final = "holds a verified copy"


@dataclass
class ReplicaReport:
    """Which trusted peers hold the version, and what the others said."""

    name: str
    version: int
    wanted: int
    holding: list[str] = field(default_factory=list)  # peer IDs, in the order they got it
    status: dict[str, str] = field(default_factory=dict)  # peer ID -> what we last heard
    names: dict[str, str] = field(default_factory=dict)  # peer ID -> trusted name
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return len(self.holding) >= self.wanted

    def label(self, peer: str) -> str:
        name = self.names.get(peer)
        return f"{name} ({peer[:12]})" if name else peer[:12]

    def describe(self) -> str:
        """One line: who holds it, and why each other peer does not (yet)."""
        held = ", ".join(self.label(p) for p in self.holding) or "none"
        others = [f"{self.label(p)}: {s}" for p, s in sorted(self.status.items()) if s != HOLDS]
        text = (
            f"{len(self.holding)} of {self.wanted} replica(s) of {self.name}@{self.version}"
            f" after {self.seconds:.0f}s; held by {held}"
        )
        return text + ("; " + "; ".join(others) if others else "")

    def as_json(self) -> dict[str, object]:
        return {
            "wanted": self.wanted,
            "holding": self.holding,
            "peers": self.status,
            "seconds": round(self.seconds, 3),
        }


def _progress(have: m.Have, chunks: int) -> str:
    if not have.bits:
        return "does not have it yet"
    held = bitfield_to_int(have.bits, chunks).bit_count()
    return f"pulling it ({held} of {chunks} chunks verified)"


async def _ask(
    finder: Finder, conns: dict[PeerId, PeerConnection], peer: PeerId, root: bytes, chunks: int
) -> str:
    """What ``peer`` says about ``root`` (its connection kept for the next round)."""
    try:
        with trio.fail_after(ASK_TIMEOUT):
            conn = conns.get(peer)
            if conn is None:
                conn = conns[peer] = await finder.connect(peer)
            reply = await conn.request(m.HaveRequest(root))
    except (P2pckptError, trio.TooSlowError, OSError) as exc:
        dropped = conns.pop(peer, None)
        if dropped is not None:
            await dropped.aclose()
        if isinstance(exc, trio.TooSlowError):
            return f"no answer within {ASK_TIMEOUT:.0f}s"
        return f"unreachable: {exc}"
    if not isinstance(reply, m.Have) or reply.root != root:
        return "answered with something else"
    return HOLDS if reply.complete else _progress(reply, chunks)


async def wait_for_replicas(
    home: Home,
    config: Config,
    manifest: Manifest,
    wanted: int,
    timeout: float,
    on_change: Callable[[ReplicaReport], None] | None = None,
) -> ReplicaReport:
    """Ask trusted peers until ``wanted`` hold ``manifest``'s version; raises
    ``ReplicasMissing`` (with the report) when ``timeout`` seconds pass first."""
    started = time.monotonic()
    report = ReplicaReport(manifest.name, manifest.version, wanted)
    # A replica holder pulls from us, so it has the pull role; a push-only
    # controller or a fellow publisher is not asked.
    peers = [p for p in home.trust if p.peer_id != home.key.peer_id and "pull" in p.roles]
    report.names = {str(p.peer_id): p.name for p in peers if p.name}
    if len(peers) < wanted:
        raise ConfigError(
            f"{wanted} replica(s) asked for, but only {len(peers)} trusted peer(s) have the"
            " pull role"
        )
    conns: dict[PeerId, PeerConnection] = {}
    failures: dict[PeerId, int] = {}
    retry_at: dict[PeerId, float] = {}
    with trio.move_on_after(timeout):
        async with open_finder(home, config) as finder:
            try:
                while not report.ok:
                    now = time.monotonic()
                    pending = [
                        p.peer_id
                        for p in peers
                        if str(p.peer_id) not in report.holding
                        and retry_at.get(p.peer_id, 0.0) <= now
                    ]
                    answers: dict[PeerId, str] = {}

                    async def ask(peer: PeerId, into: dict[PeerId, str] = answers) -> None:
                        into[peer] = await _ask(
                            finder, conns, peer, manifest.root, manifest.chunk_count
                        )

                    async with trio.open_nursery() as nursery:
                        for peer in pending:
                            nursery.start_soon(ask, peer)
                    changed = False
                    for peer, status in answers.items():
                        key = str(peer)
                        if status.startswith(("unreachable", "no answer")):
                            failures[peer] = failures.get(peer, 0) + 1  # back off: 2 s, doubling
                            retry_at[peer] = now + min(2.0 ** failures[peer], MAX_BACKOFF)
                        else:
                            failures.pop(peer, None)
                        changed |= report.status.get(key) != status
                        report.status[key] = status
                        if status == HOLDS:
                            report.holding.append(key)
                            log.info(
                                "replica name=%s version=%d peer=%s held=%d wanted=%d",
                                manifest.name,
                                manifest.version,
                                peer.short,
                                len(report.holding),
                                wanted,
                            )
                    report.seconds = time.monotonic() - started
                    if changed and on_change is not None:
                        on_change(report)
                    if not report.ok:
                        await trio.sleep(POLL_SECONDS)  # the poll interval, not a sync wait
            finally:
                for conn in conns.values():
                    await conn.aclose()
    report.seconds = time.monotonic() - started
    if not report.ok:
        raise ReplicasMissing(report.describe(), report)
    return report
