"""The daemon: everything a node does unattended, under one root nursery.

Task tree::

    run_daemon
    ├── Server.serve            listeners on cfg.listen (R-50 limits inside)
    ├── announce                mDNS, if enabled: peer ID, port, catalog epoch
    ├── register                relay registration, if a relay is configured
    ├── serve_control           HOME/run/control.sock: `p2pckpt status`
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
from typing import Any

import trio

from p2pckpt.config import Config, parse_addr
from p2pckpt.daemon.follow import Installs
from p2pckpt.discovery.finder import Finder, open_finder
from p2pckpt.discovery.sightings import Sightings
from p2pckpt.errors import ConfigError, ManifestError, P2pckptError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.pull import Progress, PullResult, choose_source
from p2pckpt.transfer.serve import Server
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.daemon")


@dataclass
class Transfer:
    name: str
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_status(self) -> dict[str, Any]:
        name, _, version = self.name.partition("@")
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "name": name,
            "version": int(version) if version.isdigit() else None,
            "direction": "pull",
            "bytes_done": self.done,
            "bytes_total": self.total,
            "rate": self.done / elapsed,
            "peers": [],
        }


class _Tracked(Progress):
    """A Progress that the status command (and metrics) can read."""

    def __init__(
        self, transfers: dict[str, Transfer], name: str, on_bytes: Callable[[int], None] | None
    ) -> None:
        self._transfers = transfers
        self._name = name
        self._on_bytes = on_bytes

    def start(self, name: str, total: int, done: int) -> None:
        self._transfers[self._name] = Transfer(name, total, done)

    def advance(self, n: int) -> None:
        if self._name in self._transfers:
            self._transfers[self._name].done += n
        if self._on_bytes is not None:
            self._on_bytes(n)


class _Reporting(Progress):
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

    def progress(self, name: str) -> Progress:
        return _Tracked(self.transfers, name, self.on_pulled)

    def active(self) -> int:
        return sum(1 for t in self.transfers.values() if t.total == 0 or t.done < t.total)

    def status(self) -> dict[str, Any]:
        self.transfers = {
            k: t for k, t in self.transfers.items() if t.total == 0 or t.done < t.total
        }
        return {
            "peer_id": str(self.home.key.peer_id),
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
            "transfers": [t.as_status() for t in self.transfers.values()],
            "peers": [self._peer(p.peer_id, p.name) for p in self.home.trust],
        }

    def _peer(self, peer: PeerId, name: str | None) -> dict[str, Any]:
        """The path to a trusted peer: how we last talked (either way), else
        where the LAN says it is, else its static address."""
        doc: dict[str, Any] = {"id": str(peer), "name": name, "route": "", "addr": ""}
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
) -> None:
    """Make a serving node findable: mDNS announcement (if enabled) and relay
    registration (if configured). Shared by ``serve`` and the daemon."""
    if cfg.mdns:
        from p2pckpt.discovery.mdns import announce

        await nursery.start(
            partial(announce, interfaces=list(cfg.interfaces) or None),
            home.key.peer_id,
            listeners[0].socket.getsockname()[1],
            home.catalog.epoch,
        )
    if cfg.relay is not None:
        from p2pckpt.relay.client import register

        nursery.start_soon(register, cfg.relay, home.key, partial(server.handle, via="relay"))


async def run_daemon(
    home: Home, cfg: Config, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every configured service until cancelled; reports the listen addresses."""
    from p2pckpt.daemon.control import serve_control

    state = DaemonState(home, cfg)

    async def on_push(
        peer: PeerId,
        addr: tuple[str, int] | None,
        req: m.PushRequest,
        report: Callable[[int, int], None],
    ) -> m.PushResult:
        """Pull what a pusher (checked for the push role) asks for, into the
        follow directory of that name; report the verified result. Pushes of
        a version already being pulled here join that pull (``installs``)."""
        from p2pckpt.daemon.follow import accept_of, install
        from p2pckpt.transfer.peer import connect_direct

        spec = next((f for f in cfg.follow if f.name == req.name), None)
        if spec is None:
            return m.PushResult(False, f"this node does not follow {req.name}")
        log.info("push name=%s version=%d from=%s", req.name, req.version, peer.short)

        async def joined() -> PullResult:
            raise AssertionError("only called when nothing runs")  # pragma: no cover

        try:
            if installs.busy(req.root):
                log.info("push joins the pull under way name=%s version=%d", req.name, req.version)
                result = await installs.run(req.root, joined)
                return m.PushResult(True, f"verified {req.name}@{req.version}", result.bytes_total)
            if addr is not None:
                conn = await connect_direct(home, addr, expect=peer)
                state.sightings.saw(peer, conn.route, conn.addr, inbound=False)
            elif state.finder is not None:
                conn = await state.finder.connect(peer)
            else:
                return m.PushResult(False, "cannot reach the pusher")
            offer = await choose_source(home, [conn], req.name, req.version, accept_of(spec))
            if offer.manifest.root != req.root:
                await offer.aclose()
                raise ManifestError(f"{req.name}@{req.version} differs from the version pushed")
            # Only peers we trust: a pusher cannot make us dial arbitrary nodes.
            peers = [(PeerId(key), (host, port)) for key, host, port in req.peers]
            hints = [(p, addr) for p, addr in peers if home.trust.get(p) is not None]
            if len(hints) < len(req.peers):
                log.info(
                    "push hints skipped=%d (peers we do not trust)", len(req.peers) - len(hints)
                )
            if installs.busy(req.root):  # another push got here while we connected
                await offer.aclose()
            result = await installs.run(
                req.root,
                partial(
                    install,
                    home,
                    spec,
                    offer,
                    lambda name: _Reporting(state.progress(name), report),
                    serving=server.serving,
                    partials=partials,
                    throttles=throttles,
                    hints=[h for h in hints if h[0] != home.key.peer_id and h[0] != peer],
                ),
            )
        except P2pckptError as exc:
            log.warning('push failed name=%s version=%d error="%s"', req.name, req.version, exc)
            return m.PushResult(False, str(exc))
        return m.PushResult(True, f"verified {req.name}@{req.version}", result.bytes_total)

    def connected(peer: PeerId, route: str, addr: str) -> None:
        state.sightings.saw(peer, route, addr, inbound=True)

    metrics = None
    if cfg.metrics is not None:
        from p2pckpt.daemon.metrics import Metrics

        metrics = Metrics(lambda: server.connected_peers, state.active)
    partials = Partials()  # what we are pulling, we also serve
    server = Server(
        home,
        on_push=on_push,
        upload=cfg.upload,
        compress=cfg.compress != "off",
        per_peer=cfg.upload_per_peer,
        partials=partials,
        on_connect=connected,
        on_served=metrics.bytes_served.inc if metrics is not None else None,
        on_packed=metrics.packed if metrics is not None else None,
    )
    installs = Installs()  # one pull per version, whoever asks (pushes, follows)
    throttles = [Throttle(cfg.download)] if cfg.download > 0 else []
    host, port = parse_addr(cfg.listen, allow_zero=True)
    if metrics is not None:
        assert cfg.metrics is not None
        state.on_pulled = metrics.bytes_pulled.inc
        state.on_corrupt = metrics.chunks_failed.inc
        try:
            metrics.serve(*cfg.metrics)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {cfg.metrics[0]}:{cfg.metrics[1]}: {exc.strerror}"
            ) from None

    async def status(_request: dict[str, Any]) -> Any:
        return state.status()

    async with contextlib.AsyncExitStack() as stack:
        # Followers share one finder (and its mDNS browser) for the daemon's life.
        finder = await stack.enter_async_context(open_finder(home, cfg)) if cfg.follow else None
        if finder is not None:
            finder.sightings = state.sightings
            state.finder = finder
        nursery = await stack.enter_async_context(trio.open_nursery())
        listeners = await nursery.start(server.serve, host, port)
        addrs = ["{}:{}".format(*lst.socket.getsockname()[:2]) for lst in listeners]
        await nursery.start(serve_control, home.path, {"status": status})
        await start_reachability(nursery, home, cfg, server, listeners)
        if cfg.watch:
            from p2pckpt.daemon.watch import watch_folder

            for spec in cfg.watch:
                await nursery.start(partial(watch_folder, home, spec, serving=server.serving))
        if finder is not None:
            from p2pckpt.daemon.follow import follow

            for fspec in cfg.follow:
                await nursery.start(
                    partial(
                        follow,
                        on_corrupt=state.on_corrupt,
                        serving=server.serving,
                        partials=partials,
                        throttles=throttles,
                        installs=installs,
                    ),
                    home,
                    finder,
                    fspec,
                    state.progress,
                )
        log.info("daemon ready listen=%s peer=%s", ",".join(addrs), home.key.peer_id)
        task_status.started(addrs)
