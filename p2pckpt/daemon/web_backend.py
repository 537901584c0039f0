"""What the web page shows and does in a running daemon (``web.Backend``).

Beside the daemon's status it shows what only other nodes can tell:

- **Offers**: what each reachable trusted peer offers (its ``ListRequest``),
  and for each version this node published how many trusted nodes with the
  "pull" role hold it verified (``HaveRequest``: complete means every chunk
  was verified, as ``publish --replicas`` counts). Asked every
  SURVEY_SECONDS, and only while a page is open (it asked for the status
  within VIEWED_SECONDS): a closed page costs no traffic.
- **Pulls** started from the page, of a version a peer offers. The page
  names only (peer, name, version), each checked (a trusted peer, a valid
  name, a version that peer offers, signed by an accepted publisher); the
  folder is never the browser's: a followed name lands in its follow's
  folder (``DIR/NAME/VERSION``, a kept version ``current`` can be pinned
  to; if newer than ``current``, ``current`` moves as a follow's pull would),
  any other name in ``[web] pull_dir/NAME/VERSION``, and without a
  ``pull_dir`` it is refused. At most MAX_PULLS at once; each can be paused
  like a follow (``pauses``).
- **Pairing**: an invitation code (``pairing.session.Invitation``) another
  node types (``p2pckpt pair CODE``), listening on the daemon's listen host
  (a free port) and announced on the LAN if mDNS is on; one at a time, for
  PAIR_SECONDS; the code is shown only on the page (behind the token).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from p2pckpt.daemon.web import WebServer, load_token, qr_svg
from p2pckpt.errors import ConfigError, NotFound, P2pckptError

if TYPE_CHECKING:
    from p2pckpt.daemon.app import DaemonState
    from p2pckpt.discovery.finder import Finder
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.transfer.peer import PeerConnection

log = logging.getLogger("p2pckpt.web")

SURVEY_SECONDS: Final = 3.0  # how often peers are asked while the page is open
VIEWED_SECONDS: Final = 20.0  # the page counts as open this long after its last poll
ASK_TIMEOUT: Final = 10.0  # one peer: connect, list, and the Have questions
MAX_REPLICA_VERSIONS: Final = 16  # newest published versions whose replicas are counted
MAX_OFFERS: Final = 500  # offered versions shown (all peers)
MAX_PULLS: Final = 4  # pulls the page runs at once
MAX_JOBS: Final = 16  # finished pulls still shown
PAIR_SECONDS: Final = 600.0


@dataclass
class WebPull:
    """A pull the page started, for the page."""

    name: str
    version: int
    peer: str
    dest: str
    state: str = "waiting"  # waiting | pulling | paused | done | failed
    error: str = ""
    at: float = field(default_factory=time.time)

    def as_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "peer": self.peer,
            "dest": self.dest,
            "state": self.state,
            "error": self.error,
            "at": self.at,
        }


@dataclass
class Pairing:
    """The page's invitation, while it waits and once it ended."""

    code: str
    addr: str
    roles: list[str]
    expires: float
    mdns: bool  # announced on the LAN
    state: str = "waiting"  # waiting | paired | failed
    peer: str = ""
    name: str = ""
    error: str = ""
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def as_status(self) -> dict[str, Any]:
        return {
            "code": self.code if self.state == "waiting" else "",
            "addr": self.addr,
            "roles": self.roles,
            "expires": self.expires,
            "mdns": self.mdns,
            "state": self.state,
            "peer": self.peer,
            "name": self.name,
            "error": self.error,
        }


class DaemonBackend:
    """The page's view of a running daemon."""

    def __init__(self, state: DaemonState) -> None:
        self._state = state
        self._qr: str | None = None
        self._viewed = -VIEWED_SECONDS
        self._wake = trio.Event()
        self.offers: list[dict[str, Any]] = []
        self.replicas: dict[tuple[str, int], dict[str, Any]] = {}
        self.surveyed: float | None = None
        self.survey_error = ""
        self.pulls: list[WebPull] = []
        self.pairing: Pairing | None = None
        self._finder: Finder | None = None  # the daemon's, or the survey's own

    # What the page shows.

    def node(self) -> dict[str, Any]:
        from p2pckpt.wire.features import release

        peer_id = str(self._state.home.key.peer_id)
        if self._qr is None:
            self._qr = qr_svg(peer_id)
        return {
            "peer_id": peer_id,
            "qr_svg": self._qr,
            "read_only": self._state.cfg.web_read_only,
            "release": release(),
        }

    def status(self) -> dict[str, Any]:
        from p2pckpt.daemon.follow import kept
        from p2pckpt.manifest.manifest import decode_meta

        self._viewed = time.monotonic()
        self._wake.set()
        state = self._state
        doc = state.status()
        catalog = state.home.catalog
        metas = catalog.metas()
        summaries = catalog.summaries()
        meta = {(e.name, e.version): metas.get(e.root, {}) for e in summaries}
        have = {e.root.hex() for e in summaries}
        for v in doc["versions"]:
            v["meta"] = decode_meta(meta.get((v["name"], v["version"]), {}))
            if v["origin"] == "published":
                v["replicas"] = self.replicas.get((v["name"], v["version"]))
        for f in doc["follows"]:
            spec = state.follows[f["name"]].spec
            f["kept"] = sorted(kept(state.home, spec.dir / spec.name))
        moving = {(t["name"], t["version"]) for t in doc["transfers"]}
        doc["offers"] = [
            o | {"held": o["root"] in have, "pulling": (o["name"], o["version"]) in moving}
            for o in self.offers
        ]
        doc["surveyed"] = self.surveyed
        doc["survey_error"] = self.survey_error
        doc["pulls"] = [p.as_status() for p in self.pulls]
        doc["paused"] = state.pauses.names()
        doc["pull_dir"] = str(state.cfg.web_pull_dir) if state.cfg.web_pull_dir else None
        read_only = state.cfg.web_read_only
        doc["pairing"] = None if read_only or self.pairing is None else self.pairing.as_status()
        return doc

    # What the page does.

    async def current(self, request: dict[str, Any]) -> Any:
        return await self._state.current(request)

    def unpublish(self, name: str, version: int) -> dict[str, Any]:
        from p2pckpt.identity.peer_id import PeerId
        from p2pckpt.manifest.paths import safe_display

        rows = self._state.home.catalog.unpublish(name, version)
        if not rows:
            raise NotFound(f"this node holds no {safe_display(name)}@{version}")
        log.info("unpublished name=%s version=%d (web page)", name, version)
        return {
            "name": name,
            "version": version,
            "unpublished": [
                {"location": e.location, "origin": e.origin, "publisher": str(PeerId(e.publisher))}
                for e in rows
            ],
        }

    async def pause(self, name: str, action: str) -> dict[str, Any]:
        return await self._state.pause({"name": name, "action": action})

    async def pull(self, peer: str, name: str, version: int) -> dict[str, Any]:
        """Start pulling ``name@version`` from ``peer`` (see the module docstring)."""
        from p2pckpt.identity.peer_id import PeerId
        from p2pckpt.manifest.manifest import validate_name
        from p2pckpt.manifest.paths import safe_display

        state = self._state
        try:
            validate_name(name)
            peer_id = PeerId.parse(peer)
        except (ValueError, P2pckptError):
            raise ConfigError("not a valid name or peer ID") from None
        if state.home.trust.get(peer_id) is None:
            raise NotFound("that peer is not trusted here")
        offered = any(
            o["peer"] == str(peer_id) and o["name"] == name and o["version"] == version
            for o in self.offers
        )
        if not offered:
            raise NotFound(
                f"{safe_display(name)}@{version} is not offered by that peer (as last heard)"
            )
        running = [p for p in self.pulls if p.state in ("waiting", "pulling", "paused")]
        if any(p.name == name and p.version == version for p in running):
            raise P2pckptError(f"{safe_display(name)}@{version} is being pulled already")
        if len(running) >= MAX_PULLS:
            raise P2pckptError(f"{MAX_PULLS} pulls are running already: wait for one")
        follow = state.follows.get(name)
        if follow is not None:
            root = follow.spec.dir / name
        elif state.cfg.web_pull_dir is not None:
            root = state.cfg.web_pull_dir / name
        else:
            raise P2pckptError(
                f"nowhere to put {safe_display(name)}: it is not followed here and [web] pull_dir"
                " is not set"
            )
        if state.nursery is None:
            raise P2pckptError("the daemon is not ready")
        job = WebPull(name, version, str(peer_id), str(root / str(version)))
        ended = [p for p in self.pulls if p.state in ("done", "failed")]
        self.pulls = [job, *running, *ended[:MAX_JOBS]]
        state.pullable.add(name)
        state.nursery.start_soon(self._run_pull, job, peer_id)
        return job.as_status()

    async def _run_pull(self, job: WebPull, peer: PeerId) -> None:
        """Run ``job`` until it is done or fails; a pause cancels it and it
        starts again (resuming from its verified chunks) on resume."""
        from p2pckpt.errors import Paused, first_leaf

        pauses = self._state.pauses
        while True:
            job.state = "paused" if pauses.paused(job.name) else "waiting"
            await pauses.wait_resumed(job.name)
            job.state = "pulling"
            paused = False
            try:
                await self._pull_once(job, peer)
                job.state = "done"
                log.info("pulled name=%s version=%d (web page)", job.name, job.version)
            except* Paused:
                paused = True  # pulled again (from its verified chunks) once resumed
            except* (P2pckptError, OSError) as group:
                job.state, job.error = "failed", str(first_leaf(group))
                log.warning(
                    'pull failed name=%s version=%d error="%s" (web page)',
                    job.name,
                    job.version,
                    job.error,
                )
            except* Exception:  # one pull, never the daemon
                log.exception("pull failed name=%s version=%d (web page)", job.name, job.version)
                job.state, job.error = "failed", "internal error (see the daemon's log)"
            if not paused:
                job.at = time.time()
                return

    async def _pull_once(self, job: WebPull, peer: PeerId) -> None:
        from pathlib import Path

        from p2pckpt.daemon.follow import accept_of, install, watch_sources
        from p2pckpt.transfer.pull import choose_source, pull_offer

        state = self._state
        home, pulls = state.home, state.pulls
        finder = state.finder or self._finder
        if finder is None or pulls is None:
            raise P2pckptError("the daemon cannot dial peers (no finder)")
        conn = await finder.connect(peer)
        follow = state.follows.get(job.name)
        accept = accept_of(follow.spec) if follow is not None else None
        offer = await choose_source(home, [conn], job.name, job.version, accept)
        if follow is not None:
            run = lambda: install(  # noqa: E731 - the shared pull of this version
                home,
                follow.spec,
                offer,
                state.progress,
                serving=state.serving,
                partials=pulls.partials,
                throttles=pulls.throttles,
                state=follow,
                pauses=state.pauses,
            )
            if pulls.installs.busy(offer.manifest.root):
                await offer.aclose()  # the running pull has its own sources
            await pulls.installs.run(offer.manifest.root, run)
            return
        target = Path(job.dest)
        manifest = offer.manifest
        # As a follow's: a one-file version inside its version folder, a
        # directory version renamed into place whole.
        (target if manifest.kind == "file" else target.parent).mkdir(parents=True, exist_ok=True)
        dest = target / manifest.files[0].path if manifest.kind == "file" else target
        tracker = state.progress(f"{job.name}@{job.version}")
        watch_sources(tracker, offer.sources)
        try:
            with state.pauses.pulling(job.name, f"{job.name}@{job.version}"):
                await pull_offer(
                    home,
                    offer,
                    dest,
                    progress=tracker,
                    throttles=pulls.throttles,
                    partials=pulls.partials,
                )
        finally:
            await offer.aclose()

    async def pair(self, action: str, roles: list[str]) -> dict[str, Any]:
        """Start an invitation (or show the one waiting), or cancel it."""
        current = self.pairing
        if action == "cancel":
            if current is None or current.state != "waiting":
                raise NotFound("no pairing code is waiting")
            current.scope.cancel()
            current.state, current.error = "failed", "cancelled on the page"
            return current.as_status()
        if current is not None and current.state == "waiting":
            return current.as_status()
        state = self._state
        if state.nursery is None:
            raise P2pckptError("the daemon is not ready")
        from p2pckpt.config import parse_addr
        from p2pckpt.net.listen import open_listeners
        from p2pckpt.pairing.words import new_code

        code = new_code()
        host, _ = parse_addr(state.cfg.listen, allow_zero=True)
        listeners = await open_listeners(host, 0, "pairing")
        port = listeners[0].socket.getsockname()[1]
        shown = _where(host)
        expires = time.time() + PAIR_SECONDS
        pairing = Pairing(str(code), f"{shown}:{port}", roles, expires, state.cfg.mdns)
        self.pairing = pairing
        state.nursery.start_soon(self._invite, pairing, code, listeners)
        log.info("pairing code offered port=%d roles=%s (web page)", port, ",".join(roles))
        return pairing.as_status()

    async def _invite(self, pairing: Pairing, code: Any, listeners: list[Any]) -> None:
        from p2pckpt.pairing.session import Invitation

        state = self._state
        me = socket.gethostname()[:64]
        invitation = Invitation(state.home, code, frozenset(pairing.roles), me)
        try:
            with pairing.scope:
                async with trio.open_nursery() as nursery:
                    if state.cfg.mdns:
                        from p2pckpt.discovery.mdns import announce_pairing

                        port = listeners[0].socket.getsockname()[1]
                        await nursery.start(announce_pairing, code.nameplate, port)
                    try:
                        outcome = await invitation.serve(listeners, PAIR_SECONDS, state.cfg.relay)
                    except P2pckptError as exc:
                        pairing.state, pairing.error = "failed", str(exc)
                    except Exception:  # one invitation, never the daemon
                        log.exception("pairing failed (web page)")
                        pairing.state, pairing.error = "failed", "internal error (see the log)"
                    else:
                        pairing.state = "paired"
                        pairing.peer = str(outcome.peer)
                        pairing.name = outcome.paired.their_name
                        log.info("paired peer=%s (web page)", outcome.peer.short)
                    nursery.cancel_scope.cancel()
        finally:
            for listener in listeners:
                await listener.aclose()

    # Asking other nodes (while the page is open).

    async def survey(self) -> None:
        """Ask trusted peers what they offer and hold, every SURVEY_SECONDS
        while the page is open, until cancelled."""
        from p2pckpt.discovery.finder import open_finder

        state = self._state
        if state.finder is not None:
            self._finder = state.finder
            await self._survey_with(state.finder)
            return
        try:
            async with open_finder(state.home, state.cfg) as finder:
                self._finder = finder
                await self._survey_with(finder)
        except (P2pckptError, OSError) as exc:  # e.g. mDNS cannot start: the page says so
            log.warning('web page cannot ask peers error="%s"', exc)
            self.survey_error = f"cannot ask peers: {exc}"
            await trio.sleep_forever()

    async def _survey_with(self, finder: Finder) -> None:
        while True:
            if time.monotonic() - self._viewed > VIEWED_SECONDS:
                self._wake = trio.Event()
                await self._wake.wait()
            try:
                await self._survey_once(finder)
            except (P2pckptError, OSError) as exc:
                self.survey_error = str(exc)
            except Exception:  # a round, never the daemon
                log.exception("web page survey failed")
                self.survey_error = "internal error (see the daemon's log)"
            self.surveyed = time.time()
            await trio.sleep(SURVEY_SECONDS)

    async def _survey_once(self, finder: Finder) -> None:
        from p2pckpt.transfer.pull import list_remote
        from p2pckpt.wire import messages as m

        state = self._state
        home = state.home
        me = home.key.peer_id
        holders = [p.peer_id for p in home.trust if p.peer_id != me and "pull" in p.roles]
        published = [e for e in home.catalog.summaries() if e.origin == "published"]
        published = sorted(published, key=lambda e: e.version)[-MAX_REPLICA_VERSIONS:]
        try:
            conns = await finder.connect_all(None)
        except P2pckptError as exc:
            conns, self.survey_error = [], str(exc)
        else:
            self.survey_error = ""
        offers: list[dict[str, Any]] = []
        held: dict[bytes, list[str]] = {e.root: [] for e in published}

        async def ask(conn: PeerConnection) -> None:
            peer = conn.peer
            try:
                with trio.fail_after(ASK_TIMEOUT):
                    for v in await list_remote(conn):
                        offers.append(
                            {
                                "peer": str(peer),
                                "route": conn.route,
                                "name": v.name,
                                "version": v.version,
                                "bytes": v.total_bytes,
                                "files": v.file_count,
                                "meta": dict(v.meta),
                                "root": v.root.hex(),
                            }
                        )
                    if peer in holders:
                        for root in held:
                            reply = await conn.request(m.HaveRequest(root))
                            if isinstance(reply, m.Have) and reply.root == root and reply.complete:
                                held[root].append(str(peer))
            except (P2pckptError, OSError, trio.TooSlowError) as exc:
                log.debug('survey peer=%s error="%s"', peer.short, exc)
            finally:
                await conn.aclose()

        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(ask, conn)
        offers.sort(key=lambda o: (o["name"], -o["version"], o["peer"]))
        self.offers = offers[:MAX_OFFERS]
        self.replicas = {
            (e.name, e.version): {"holding": len(held[e.root]), "of": len(holders)}
            for e in published
        }


def _where(host: str) -> str:
    """An address of ours worth giving to a joiner."""
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 -- recognising it, not binding
        return f"[{host}]" if ":" in host else host
    from p2pckpt.discovery.mdns import local_ipv4

    found = local_ipv4()
    return found[0] if found else "THIS-HOST"


async def serve_web(
    state: DaemonState, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """The daemon's web page at ``[web] listen``, and what it shows of other
    nodes (``web_backend``); reports its URL (without the token)."""
    cfg = state.cfg
    assert cfg.web is not None
    token = load_token(state.home.path)
    backend = DaemonBackend(state)
    server = WebServer(backend, token, read_only=cfg.web_read_only, hosts=cfg.web_hosts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.survey)
        url = await nursery.start(partial(server.serve, *cfg.web))
        task_status.started(url)
