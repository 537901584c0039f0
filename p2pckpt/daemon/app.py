"""The daemon: everything a node does unattended, under one root nursery.

Task tree::

    run_daemon
    ├── Server.serve            listeners on cfg.listen (R-50 limits inside);
    │                           pushes it takes are pulled back (``pushes``)
    ├── announce                mDNS, if enabled: peer ID, port, catalog epoch
    ├── register                relay registration, if a relay is configured
    ├── serve_control           HOME/run/control.sock: `p2pckpt status`, `current`,
    │                           `pause`, `resume` (``pauses``)
    ├── serve_web               the web page, if ``[web] listen`` is set (``daemon.web_backend``)
    ├── watch_folder (each)     publish completed checkpoints ([[watch]])
    └── follow (each)           pull new versions, flip `current`, hook ([[follow]])

Each service reports readiness through ``task_status``; ``run_daemon`` is
ready when all are. SIGTERM/SIGINT cancel the root scope: pulls stop between
chunks with their journals flushed (the staging close path), the control
socket is removed, and mDNS says goodbye — bounded to a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from p2pckpt.config import Config, parse_addr
from p2pckpt.daemon.pauses import Pauses
from p2pckpt.daemon.pushes import Pulls, Pushes
from p2pckpt.discovery.finder import Finder, open_finder
from p2pckpt.discovery.sightings import Sightings
from p2pckpt.errors import ConfigError, NotFound, P2pckptError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer import releases
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.transfer.pull import Progress
from p2pckpt.transfer.serve import Server
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire.features import FEATURES, PROTOCOL, release

if TYPE_CHECKING:
    from p2pckpt.daemon.follow import FollowState
    from p2pckpt.daemon.metrics import Metrics
    from p2pckpt.daemon.watch import WatchState
    from p2pckpt.transfer.swarm import Source

log = logging.getLogger("p2pckpt.daemon")

SWITCH_WAIT = 8.0  # a `current` request waits this long for its hook (the rest: status)


@dataclass
class Transfer:
    name: str
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    sources: list[Source] = field(default_factory=list)  # the pull's (live: joiners too)

    def as_status(self, paused: bool = False) -> dict[str, Any]:
        name, _, version = self.name.partition("@")
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "name": name,
            "version": int(version) if version.isdigit() else None,
            "direction": "pull",
            "bytes_done": self.done,
            "bytes_total": self.total,
            "rate": 0.0 if paused else self.done / elapsed,
            "paused": paused,
            "peers": [
                {"id": str(s.peer), "route": s.route, "via": s.via}
                for s in ([] if paused else list(self.sources))
                if not s.problem
            ],
        }


class _Tracked(Progress):
    """A Progress that the status command (and metrics) can read."""

    def __init__(
        self, transfers: dict[str, Transfer], name: str, on_bytes: Callable[[int], None] | None
    ) -> None:
        self._transfers = transfers
        self._name = name
        self._on_bytes = on_bytes
        self._sources: list[Source] = []

    def watch(self, sources: list[Source]) -> None:
        """The pull's sources, for ``status`` (the list the swarm grows)."""
        self._sources = sources
        if self._name in self._transfers:
            self._transfers[self._name].sources = sources

    def start(self, name: str, total: int, done: int) -> None:
        self._transfers[self._name] = Transfer(name, total, done, sources=self._sources)

    def advance(self, n: int) -> None:
        if self._name in self._transfers:
            self._transfers[self._name].done += n
        if self._on_bytes is not None:
            self._on_bytes(n)


@dataclass
class DaemonState:
    home: Home
    cfg: Config
    started: float = field(default_factory=time.time)
    sightings: Sightings = field(default_factory=Sightings)
    finder: Finder | None = None
    transfers: dict[str, Transfer] = field(default_factory=dict)
    on_pulled: Callable[[int], None] | None = None
    on_corrupt: Callable[[], None] | None = None
    follows: dict[str, FollowState] = field(default_factory=dict)  # by name
    watches: list[WatchState] = field(default_factory=list)
    nursery: trio.Nursery | None = None  # where hand switches run
    on_web: Callable[[str, str], None] | None = None  # told the web page's URL and token
    pauses: Pauses = field(default_factory=Pauses)  # names whose pulls are paused
    pullable: set[str] = field(default_factory=set)  # names the web page started pulls of
    pulls: Pulls | None = None  # what every pull here shares (the web page's pulls too)
    serving: Callable[[], set[bytes]] | None = None  # roots peers are reading from us now

    def progress(self, name: str) -> Progress:
        return _Tracked(self.transfers, name, self.on_pulled)

    def connected(self, peer: PeerId, route: str, addr: str) -> None:
        """An authenticated connection from ``peer`` (the server tells)."""
        self.sightings.saw(peer, route, addr, inbound=True)

    def active(self) -> int:
        return sum(1 for t in self.transfers.values() if t.total == 0 or t.done < t.total)

    def status(self) -> dict[str, Any]:
        self.transfers = {
            k: t for k, t in self.transfers.items() if t.total == 0 or t.done < t.total
        }
        return {
            "peer_id": str(self.home.key.peer_id),
            "release": release(),
            "protocol": PROTOCOL,
            "features": sorted(FEATURES),
            "started": self.started,
            "versions": [
                {
                    "name": e.name,
                    "version": e.version,
                    "bytes": e.total_bytes,
                    "origin": e.origin,
                    "location": e.location,
                }
                for e in self.home.catalog.summaries()
            ],
            "transfers": [
                t.as_status(self.pauses.paused(t.name.partition("@")[0]))
                for t in self.transfers.values()
            ],
            "peers": [self._peer(p.peer_id, p.name) for p in self.home.trust],
            "follows": [
                f.as_status() | {"paused": self.pauses.paused(n)} for n, f in self.follows.items()
            ],
            "watches": [w.as_status() for w in self.watches],
        }

    async def current(self, request: dict[str, Any]) -> Any:
        """The control command behind ``p2pckpt current NAME [--pin V |
        --unpin | --rollback]``: switch a follow's ``current`` here, in the
        daemon, so it cannot race the daemon's own switches."""
        from p2pckpt.daemon.follow import switch

        name, action, version = request.get("name"), request.get("action"), request.get("version")
        if not isinstance(name, str) or not isinstance(action, str):
            raise ConfigError('"current" needs a string "name" and "action"')
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ConfigError('"current": "version" must be an integer')
        follow = self.follows.get(name)
        if follow is None:
            raise NotFound(f"this daemon does not follow {name!r}")
        if self.nursery is None:
            return await switch(self.home, follow.spec, action, version, follow)
        # The switch (and its hook, up to HOOK_TIMEOUT) runs in the daemon,
        # not under the control request's deadline; the client waits a while.
        done = trio.Event()
        outcome: list[dict[str, Any] | P2pckptError] = []

        async def run() -> None:
            try:
                outcome.append(await switch(self.home, follow.spec, action, version, follow))
            except P2pckptError as exc:
                outcome.append(exc)
            except OSError as exc:  # the follow folder: one refusal, never the daemon
                outcome.append(P2pckptError(f"cannot switch {name}: {exc}"))
            except Exception as exc:
                log.exception("current switch failed name=%s", name)
                outcome.append(P2pckptError(f"internal error switching {name}: {exc!r}"))
            finally:
                done.set()

        self.nursery.start_soon(run)
        with trio.move_on_after(SWITCH_WAIT):
            await done.wait()
        if not outcome:
            return {"name": name, "pending": True}
        if isinstance(outcome[0], P2pckptError):
            raise outcome[0]
        return outcome[0]

    async def pause(self, request: dict[str, Any]) -> dict[str, Any]:
        """The control command behind ``p2pckpt pause NAME`` and ``resume
        NAME`` ({"name", "action": "pause" | "resume"}): stop a followed
        name's pulls (or a pull the web page started), or let them run again."""
        name, action = request.get("name"), request.get("action")
        if not isinstance(name, str) or action not in ("pause", "resume"):
            raise ConfigError('"pause" needs a string "name" and "action": "pause" or "resume"')
        known = name in self.follows or self.pauses.paused(name) or name in self.pullable
        if not known:
            raise NotFound(f"this daemon does not follow {name!r} nor pull it for the web page")
        changed = self.pauses.pause(name) if action == "pause" else self.pauses.resume(name)
        if changed:
            log.info("%s name=%s", "paused" if action == "pause" else "resumed", name)
        return {"name": name, "paused": self.pauses.paused(name), "changed": changed}

    def _peer(self, peer: PeerId, name: str | None) -> dict[str, Any]:
        """The path to a trusted peer: how we last talked (either way), else
        where the LAN says it is, else its static address."""
        doc: dict[str, Any] = {"id": str(peer), "name": name, "route": "", "addr": ""}
        spoken = releases.heard(peer)
        if spoken is not None:  # what it said in a Hello (or that it said none: 0.1.0)
            doc["release"] = spoken.release
            doc["protocol"] = spoken.protocol
        seen = self.sightings.get(peer)
        if seen is not None:
            return doc | {
                "route": seen.route,
                "addr": seen.addr,
                "inbound": seen.inbound,
                "seen": seen.seen,
            }
        browser = self.finder.browser if self.finder is not None else None
        heard = browser.peers().get(peer) if browser is not None else None
        if heard is not None and heard.addrs:
            return doc | {"route": "mdns", "addr": "{}:{}".format(*heard.addrs[0])}
        static = self.cfg.static_addrs(peer)
        if static:
            return doc | {"route": "static", "addr": "{}:{}".format(*static[0])}
        return doc


async def start_reachability(
    nursery: trio.Nursery,
    home: Home,
    cfg: Config,
    server: Server,
    listeners: list[trio.SocketListener],
    book: ProgressBook | None = None,
) -> None:
    """Make a serving node findable: mDNS announcement (if enabled) and relay
    registration (if configured). Shared by ``serve`` and the daemon. The
    epoch announced also moves when ``book``'s in-progress offers do (issue
    21), so LAN followers look again at once."""
    if cfg.mdns:
        from p2pckpt.discovery.mdns import announce

        def epoch() -> int:
            held = home.catalog.epoch()
            return held if book is None else book.epoch(held)

        await nursery.start(
            partial(announce, interfaces=list(cfg.interfaces) or None),
            home.key.peer_id,
            listeners[0].socket.getsockname()[1],
            epoch,
        )
    if cfg.relay is not None:
        from p2pckpt.relay.client import register

        nursery.start_soon(register, cfg.relay, home.key, partial(server.handle, via="relay"))


async def run_daemon(
    home: Home,
    cfg: Config,
    *,
    on_web: Callable[[str, str], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every configured service until cancelled; reports the listen
    addresses (and the web page's URL and token to ``on_web``, if it is on)."""
    state = DaemonState(home, cfg, on_web=on_web)
    pulls = Pulls(throttles=[Throttle(cfg.download)] if cfg.download > 0 else [])
    pushes = Pushes(state, pulls)
    metrics = _new_metrics(cfg, lambda: server.connected_peers, state.active)
    server = Server.configured(
        home,
        cfg,
        on_push=pushes,
        partials=pulls.partials,
        progress=pulls.progress,
        on_connect=state.connected,
        on_served=metrics.bytes_served.inc if metrics is not None else None,
        on_packed=metrics.packed if metrics is not None else None,
    )
    pushes.serving = server.serving
    state.pulls, state.serving = pulls, server.serving
    host, port = parse_addr(cfg.listen, allow_zero=True)
    if metrics is not None:
        _serve_metrics(cfg, state, metrics)
    async with contextlib.AsyncExitStack() as stack:
        # Followers share one finder (and its mDNS browser) for the daemon's life.
        finder = await stack.enter_async_context(open_finder(home, cfg)) if cfg.follow else None
        if finder is not None:
            finder.sightings = state.sightings
            state.finder = finder
        nursery = await stack.enter_async_context(trio.open_nursery())
        addrs = await _start_tasks(nursery, state, server, pulls, (host, port))
        log.info("daemon ready listen=%s peer=%s", ",".join(addrs), home.key.peer_id)
        task_status.started(addrs)


def _new_metrics(
    cfg: Config, peers: Callable[[], int], transfers: Callable[[], int]
) -> Metrics | None:
    """The daemon's metrics, if ``[daemon] metrics`` is set (served later)."""
    if cfg.metrics is None:
        return None
    from p2pckpt.daemon.metrics import Metrics

    return Metrics(peers, transfers)


def _serve_metrics(cfg: Config, state: DaemonState, metrics: Metrics) -> None:
    """Count pulled and corrupt chunks too, and serve the metrics endpoint."""
    assert cfg.metrics is not None
    state.on_pulled = metrics.bytes_pulled.inc
    state.on_corrupt = metrics.chunks_failed.inc
    try:
        metrics.serve(*cfg.metrics)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {cfg.metrics[0]}:{cfg.metrics[1]}: {exc.strerror}"
        ) from None


async def _start_tasks(
    nursery: trio.Nursery,
    state: DaemonState,
    server: Server,
    pulls: Pulls,
    listen: tuple[str, int],
) -> list[str]:
    """Start every service (the task tree above), each ready when this
    returns; returns the listen addresses."""
    from p2pckpt.daemon.control import serve_control

    home, cfg = state.home, state.cfg

    async def status(_request: dict[str, Any]) -> Any:
        return state.status()

    listeners = await nursery.start(server.serve, *listen)
    addrs = ["{}:{}".format(*lst.socket.getsockname()[:2]) for lst in listeners]
    state.nursery = nursery
    handlers = {"status": status, "current": state.current, "pause": state.pause}
    await nursery.start(serve_control, home.path, handlers)
    await start_reachability(nursery, home, cfg, server, listeners, pulls.progress)
    if cfg.web is not None:
        from p2pckpt.daemon.web import load_token
        from p2pckpt.daemon.web_backend import serve_web

        url = await nursery.start(serve_web, state)
        if state.on_web is not None:
            state.on_web(url, load_token(home.path))
    if cfg.watch:
        from p2pckpt.daemon.watch import WatchState, watch_folder

        for spec in cfg.watch:
            watching = WatchState(spec)
            state.watches.append(watching)
            await nursery.start(
                partial(
                    watch_folder,
                    home,
                    spec,
                    serving=server.serving,
                    state=watching,
                    book=pulls.progress,
                )
            )
    if state.finder is not None:
        from p2pckpt.daemon.follow import FollowState, follow

        for fspec in cfg.follow:
            following = state.follows[fspec.name] = FollowState(fspec)
            await nursery.start(
                partial(
                    follow,
                    on_corrupt=state.on_corrupt,
                    serving=server.serving,
                    partials=pulls.partials,
                    throttles=pulls.throttles,
                    installs=pulls.installs,
                    state=following,
                    pauses=state.pauses,
                ),
                home,
                state.finder,
                fspec,
                state.progress,
            )
    return addrs
