"""The daemon's answer to a push: pull the pushed version back from the pusher.

A push (from a peer the server has checked for the "push" role) names a
version of something this node follows; it is pulled into that follow's
directory like any new version (``follow.install``), with the push's other
targets, those we trust, as extra sources. Pushes of a version already
being pulled here join that pull (``Installs``). The pusher is told how far
the pull has got and, at the end, the verified result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from p2pckpt.config import FollowSpec
from p2pckpt.daemon.follow import Installs, accept_of, install, watch_sources
from p2pckpt.errors import ManifestError, P2pckptError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import PeerConnection, connect_direct
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.transfer.pull import Hint, Progress, PullResult, choose_source
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m

if TYPE_CHECKING:
    from p2pckpt.daemon.app import DaemonState
    from p2pckpt.transfer.swarm import Source

log = logging.getLogger("p2pckpt.daemon")


@dataclass
class Pulls:
    """What every pull the daemon runs shares, a push's or a follow's."""

    partials: Partials = field(default_factory=Partials)  # what we are pulling, we also serve
    installs: Installs = field(default_factory=Installs)  # one pull per version, whoever asks
    throttles: list[Throttle] = field(default_factory=list)
    progress: ProgressBook = field(default_factory=ProgressBook)  # in progress here (issue 21)


class Reporting(Progress):
    """Also tells a pusher how far its push has got."""

    def __init__(self, inner: Progress, report: Callable[[int, int], None]) -> None:
        self._inner = inner
        self._report = report
        self._done = self._total = 0

    def start(self, name: str, total: int, done: int) -> None:
        self._inner.start(name, total, done)
        self._total, self._done = total, done
        self._report(done, total)

    def advance(self, n: int) -> None:
        self._inner.advance(n)
        self._done += n
        self._report(self._done, self._total)

    def watch(self, sources: list[Source]) -> None:
        watch_sources(self._inner, sources)


async def _joined() -> PullResult:
    raise AssertionError("only called when nothing runs")  # pragma: no cover


def push_hints(home: Home, req: m.PushRequest, pusher: PeerId) -> list[Hint]:
    """The push's other targets to pull from too: only peers we trust (a
    pusher cannot make us dial arbitrary nodes), never us or the pusher."""
    peers = [(PeerId(key), (host, port)) for key, host, port in req.peers]
    hints = [(p, addr) for p, addr in peers if home.trust.get(p) is not None]
    if len(hints) < len(req.peers):
        log.info("push hints skipped=%d (peers we do not trust)", len(req.peers) - len(hints))
    return [h for h in hints if h[0] != home.key.peer_id and h[0] != pusher]


class Pushes:
    """The server's push handler for a daemon (see the module docstring)."""

    def __init__(self, state: DaemonState, pulls: Pulls) -> None:
        self._state = state
        self._pulls = pulls
        self.serving: Callable[[], set[bytes]] | None = None  # the server's, once it exists

    async def __call__(
        self,
        peer: PeerId,
        addr: tuple[str, int] | None,
        req: m.PushRequest,
        report: Callable[[int, int], None],
    ) -> m.PushResult:
        spec = next((f for f in self._state.cfg.follow if f.name == req.name), None)
        if spec is None:
            return m.PushResult(False, f"this node does not follow {req.name}")
        log.info("push name=%s version=%d from=%s", req.name, req.version, peer.short)
        installs = self._pulls.installs
        try:
            if installs.busy(req.root):
                log.info("push joins the pull under way name=%s version=%d", req.name, req.version)
                result = await installs.run(req.root, _joined)
            else:
                conn = await self._connect(peer, addr)
                if conn is None:
                    return m.PushResult(False, "cannot reach the pusher")
                result = await self._install(conn, peer, req, spec, report)
        except P2pckptError as exc:
            log.warning('push failed name=%s version=%d error="%s"', req.name, req.version, exc)
            return m.PushResult(False, str(exc))
        return m.PushResult(True, f"verified {req.name}@{req.version}", result.bytes_total)

    async def _connect(self, peer: PeerId, addr: tuple[str, int] | None) -> PeerConnection | None:
        """A connection back to the pusher: at its address, else as the finder
        finds it; None if neither is known."""
        state = self._state
        if addr is not None:
            conn = await connect_direct(state.home, addr, expect=peer)
            state.sightings.saw(peer, conn.route, conn.addr, inbound=False)
            return conn
        if state.finder is not None:
            return await state.finder.connect(peer)
        return None

    async def _install(
        self,
        conn: PeerConnection,
        peer: PeerId,
        req: m.PushRequest,
        spec: FollowSpec,
        report: Callable[[int, int], None],
    ) -> PullResult:
        """Pull the pushed version through ``conn`` (and the hinted peers)."""
        home, installs = self._state.home, self._pulls.installs
        offer = await choose_source(home, [conn], req.name, req.version, accept_of(spec))
        if offer.manifest.root != req.root:
            await offer.aclose()
            raise ManifestError(f"{req.name}@{req.version} differs from the version pushed")
        hints = push_hints(home, req, peer)
        if installs.busy(req.root):  # another push got here while we connected
            await offer.aclose()
        return await installs.run(
            req.root,
            partial(
                install,
                home,
                spec,
                offer,
                lambda name: Reporting(self._state.progress(name), report),
                serving=self.serving,
                partials=self._pulls.partials,
                throttles=self._pulls.throttles,
                hints=hints,
                state=self._state.follows.get(spec.name),
                pauses=self._state.pauses,
            ),
        )
