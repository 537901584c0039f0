"""Following a name: pull each new version, flip ``current``, run the hook.

Layout under a followed directory::

    DIR/NAME/<version>/...   one directory per version (a file checkpoint
                             keeps its file name inside it)
    DIR/NAME/current         symlink to "<version>" for a directory
                             checkpoint, and to "<version>/<file>" for a
                             one-file checkpoint, so a server opens
                             DIR/NAME/current itself as the checkpoint
                             (a directory, or the file); replaced atomically
                             (symlink to a temporary name, rename over it,
                             fsync the directory): loaders see the old or the
                             new version, never a mix (R-44)
    DIR/NAME/.pinned         the version ``current`` is held at, if pinned
                             (``p2pckpt current NAME --pin V``): new versions
                             are still pulled and kept, ``current`` stays

``switch`` moves ``current`` by hand (pin, unpin, rollback) among the kept
versions (version directories the catalog holds), running the hook as an
automatic switch does.

A check asks every reachable trusted peer for the newest version (signed by
one of the follow's ``publishers``, or by a peer trusted with "publish" when
it names none, R-64; rollback and an expired newest version refused as in any
pull) and pulls it if it is newer than ``current``. ``current`` counts only
while its own publisher is still accepted: once a (perhaps stolen) key is
removed from trust, the newest version of an accepted publisher is installed
whatever its number (R-23). The publisher is checked again after the pull
and before ``current`` moves or the hook runs, so a ``trust rm`` during a
pull installs nothing. Checks run when mDNS says a peer's epoch changed
(a version published, or an in-progress offer changed: issue 21), when a
peer answers the long poll kept open between checks (``_told``), and at
least every POLL_SECONDS otherwise. A failed check or hook
is logged and retried at the next trigger; nothing here ends the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from p2pckpt.config import FollowSpec
from p2pckpt.daemon.pauses import Pauses
from p2pckpt.discovery.finder import Finder
from p2pckpt.errors import (
    ChunkCorrupt,
    ConfigError,
    CopyDiffers,
    Equivocation,
    Expired,
    NotFound,
    P2pckptError,
    Paused,
    TransferError,
    first_leaf,
)
from p2pckpt.fs.atomic import fsync_dir, write_atomic
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.logs import Polls, polling
from p2pckpt.transfer.choose import (
    PROGRESS_WAIT,
    await_progress,
    choose_in_progress,
    publisher_refusal,
)
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.transfer.pipeline import MAX_PROGRESS_WAIT
from p2pckpt.transfer.pull import (
    Accept,
    Hint,
    Offer,
    Progress,
    PullResult,
    choose_source,
    prefetch,
    pull_offer,
)
from p2pckpt.transfer.swarm import Source
from p2pckpt.transfer.throttle import Throttle

log = logging.getLogger("p2pckpt.follow")

POLL_SECONDS: Final = 2.0  # without mDNS, how often peers are asked
MDNS_POLL_SECONDS: Final = 30.0  # with mDNS, epoch changes wake us; this is the fallback
STREAM_POLL_SECONDS: Final = 0.5  # while a version is being written: how often peers are asked
PROGRESS_TIMEOUT: Final = 60.0  # a long poll unanswered this long: the peer is gone
HOOK_TIMEOUT: Final = 300.0
CURRENT: Final = "current"
PINNED: Final = ".pinned"


def current_version(root: Path) -> int | None:
    """The version ``root/current`` points to, if any."""
    try:
        target = os.readlink(root / CURRENT)
    except OSError:
        return None
    head = target.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def repoint(root: Path, version: int, file: str | None = None) -> None:
    """Atomically make ``root/current`` point to ``version`` (to the file
    ``file`` inside it, for a one-file checkpoint)."""
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(str(version) if file is None else f"{version}/{file}", tmp)
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def pinned(root: Path) -> int | None:
    """The version ``current`` is pinned at, if any."""
    try:
        text = (root / PINNED).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def set_pin(root: Path, version: int | None) -> None:
    """Pin ``current`` at ``version`` (None: release it), durably."""
    if version is None:
        with contextlib.suppress(FileNotFoundError):
            (root / PINNED).unlink()
            fsync_dir(root)
        return
    write_atomic(root / PINNED, f"{version}\n".encode(), mode=0o644)


def kept(home: Home, root: Path) -> dict[int, Path]:
    """The versions held under ``root`` (version directories the catalog
    holds a copy in), each with the path ``current`` names for it: the
    directory, or the file inside it for a one-file checkpoint."""
    found: dict[int, Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for p in root.iterdir():
            if not p.name.isdigit():
                continue
            for r in home.catalog.roots_under(p):
                entry = home.catalog.by_root(r)
                copies = [entry.location] if entry is not None else []
                copies += [loc for loc, _ in home.catalog.copy_locations(r)]
                inside = [c for c in copies if c == str(p) or c.startswith(f"{p}/")]
                if inside:
                    found[int(p.name)] = Path(inside[0])
                    break
    return found


@dataclass
class HookResult:
    """How the last hook run ended, for ``status``."""

    version: int
    code: int | None  # None: it could not run, or timed out (``error``)
    at: float
    error: str = ""

    def as_status(self) -> dict[str, Any]:
        return {"version": self.version, "code": self.code, "at": self.at, "error": self.error}


@dataclass
class FollowState:
    """One follow as the daemon sees it (``status``), and the lock that
    keeps a hand switch and an automatic one from interleaving."""

    spec: FollowSpec
    lock: trio.Lock = field(default_factory=trio.Lock)
    last_version: int | None = None  # the newest version installed by this daemon
    last_check: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None  # the last check that ended without an error
    hook: HookResult | None = None
    streaming: bool = False  # a version is being written and prefetched (issue 21)
    heard: dict[PeerId, int] = field(default_factory=dict)  # each peer's last long-poll answer
    offered: int = 0  # the in-progress sequence the last check found offered (0: none)
    again: bool = False  # a prefetch just ended: look again at once (more may be finished)
    prefetched: dict[tuple[bytes, int], int] = field(default_factory=dict)  # newest sequence

    def failed(self, error: BaseException | str) -> None:
        self.last_error, self.last_error_at = str(error), time.time()

    def as_status(self) -> dict[str, Any]:
        root = self.spec.dir / self.spec.name
        return {
            "name": self.spec.name,
            "dir": str(root),
            "current": current_version(root),
            "pinned": pinned(root),
            "last_version": self.last_version,
            "last_check": self.last_check,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
            "hook": self.hook.as_status() if self.hook is not None else None,
        }


class Installs:
    """One pull per version in a daemon: a push or a follow check for a
    version already being installed waits for that pull and shares its
    result, instead of racing it for the same staging folder (issue 14.6)."""

    def __init__(self) -> None:
        self._running: dict[bytes, tuple[trio.Event, list[PullResult | BaseException]]] = {}

    def busy(self, root: bytes) -> bool:
        return root in self._running

    async def run(self, root: bytes, pull: Callable[[], Awaitable[PullResult]]) -> PullResult:
        """``pull()``, unless that version is being installed: then its result."""
        running = self._running.get(root)
        if running is not None:
            done, outcome = running
            await done.wait()
            if isinstance(outcome[0], BaseException):
                raise TransferError(f"the pull this joined failed: {outcome[0]}")
            return outcome[0]
        done, outcome = self._running[root] = (trio.Event(), [])
        try:
            result = await pull()
            outcome.append(result)
            return result
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            del self._running[root]
            done.set()


def accept_of(spec: FollowSpec) -> Accept:
    """The versions ``spec`` installs."""
    return Accept(spec.publishers, spec.allow_expired)


def baseline(home: Home, spec: FollowSpec) -> int | None:
    """The version a new one must beat: ``current``, while the publisher that
    signed it is still accepted by ``spec``; None if there is none (or its
    publisher was removed from trust, so its number binds nothing)."""
    root = spec.dir / spec.name
    have = current_version(root)
    if pinned(root) is not None:  # current stays put: beat what is kept
        have = max(kept(home, root), default=have)
    if have is None:
        return None
    roots = home.catalog.roots_under(root / str(have))
    entries = [e for e in (home.catalog.by_root(r) for r in roots) if e is not None]
    accept = accept_of(spec)
    if any(publisher_refusal(home, e.manifest(), accept) is None for e in entries):
        return have
    log.warning(
        "current name=%s version=%d no longer counts: its publisher is not accepted here"
        " (the newest version of an accepted publisher will be installed)",
        spec.name,
        have,
    )
    return None


def retain(root: Path, keep: int, protect: set[int]) -> list[int]:
    """Delete all but the newest ``keep`` version directories, never one in
    ``protect`` (``current``, or being pulled). Returns what was deleted."""
    versions = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
    doomed = [v for v in versions[keep:] if v not in protect]
    for v in doomed:
        shutil.rmtree(root / str(v), ignore_errors=True)
    if doomed:
        fsync_dir(root)
    return doomed


async def run_hook(
    spec: FollowSpec,
    version: int,
    publisher: str,
    path: Path,
    state: FollowState | None = None,
) -> HookResult | None:
    """Run the configured command with the version ``current`` now names in
    its environment (``P2PCKPT_PATH``: what ``current`` points to); None if
    no hook is configured. Its outcome is logged and kept in ``state``."""
    if not spec.hook:
        return None
    env = {
        **os.environ,
        "P2PCKPT_NAME": spec.name,
        "P2PCKPT_VERSION": str(version),
        "P2PCKPT_PATH": str(path),
        "P2PCKPT_PUBLISHER": publisher,
    }
    try:
        with trio.fail_after(HOOK_TIMEOUT):
            done = await trio.run_process(list(spec.hook), env=env, check=False)
    except (OSError, trio.TooSlowError) as exc:
        log.error('hook failed name=%s version=%d error="%s"', spec.name, version, exc)
        result = HookResult(version, None, time.time(), str(exc) or "timed out")
    else:
        level = logging.INFO if done.returncode == 0 else logging.ERROR
        log.log(
            level, "hook exited name=%s version=%d code=%d", spec.name, version, done.returncode
        )
        result = HookResult(version, done.returncode, time.time())
    if state is not None:
        state.hook = result
    return result


async def switch(
    home: Home,
    spec: FollowSpec,
    action: str,
    version: int | None = None,
    state: FollowState | None = None,
) -> dict[str, Any]:
    """Move ``current`` by hand: ``pin`` (to kept ``version``, and hold it
    there), ``unpin`` (release it: to the newest kept version), ``rollback``
    (to the newest kept version older than ``current``, pinned), or ``show``.
    A move repoints atomically and runs the hook, as an automatic switch.

    Raises:
        NotFound: no such kept version (or nothing older to roll back to).
        ConfigError: an unknown action.
    """
    root = spec.dir / spec.name
    lock = state.lock if state is not None else trio.Lock()
    async with lock:
        versions = kept(home, root)
        now = current_version(root)
        if action == "show":
            target = None
        elif action == "pin":
            if version is None or version not in versions:
                held = ", ".join(map(str, sorted(versions))) or "none"
                raise NotFound(f"{spec.name}@{version} is not kept in {root} (kept: {held})")
            target = version
        elif action == "rollback":
            if now is None:
                raise NotFound(f"{spec.name} has no current version in {root} to roll back from")
            older = [v for v in versions if v < now]
            if not older:
                raise NotFound(f"no kept version of {spec.name} older than {now} to roll back to")
            target = max(older)
        elif action == "unpin":
            target = max(versions) if versions else None
        else:
            raise ConfigError(f"unknown current action {action!r}")
        if target is not None and target != now:
            _check_sound(home, spec.name, target, versions[target])
        if action in ("pin", "rollback"):
            set_pin(root, target)
        elif action == "unpin":
            set_pin(root, None)
        hook = None
        moved = target is not None and target != now
        if moved:
            assert target is not None
            path = versions[target]
            file = path.name if path.parent.name == str(target) else None
            repoint(root, target, file)
            log.info('current name=%s version=%d path="%s" (%s)', spec.name, target, path, action)
            who = _publisher_of(home, path)
            hook = await run_hook(spec, target, who, path, state)
    return {
        "name": spec.name,
        "current": current_version(root),
        "pinned": pinned(root),
        "kept": sorted(versions),
        "switched": moved,
        "hook": hook.as_status() if hook is not None else None,
    }


def _check_sound(home: Home, name: str, version: int, path: Path) -> None:
    """Refuse to switch ``current`` to a kept copy whose files changed since
    it was verified (a cheap check: sizes and mtimes, as ``gc``). Kept
    versions share unchanged files by hard link, so an edit in place of one
    copy shows in the others: it must not become current unnoticed."""
    from p2pckpt.store.gc import check_copy

    for entry in home.catalog.at_location(path):
        stamps = home.catalog.stamps(entry.root, str(path))
        why = check_copy(entry.manifest(), str(path), stamps, entry.selected)
        if why is not None:
            reason, where = why
            raise CopyDiffers(
                f"{name}@{version} at {path} is {reason} since it was pulled ({where}): not"
                f" switching to it; 'p2pckpt verify {path}' says more, and pulling it again"
                " repairs it"
            )


def _publisher_of(home: Home, path: Path) -> str:
    """The peer ID that signed the version stored at ``path``."""
    rows = home.catalog.at_location(path)
    return str(PeerId(rows[0].publisher)) if rows else ""


async def check_once(
    home: Home,
    finder: Finder,
    spec: FollowSpec,
    progress: Callable[[str], Progress],
    serving: Callable[[], set[bytes]] | None = None,
    partials: Partials | None = None,
    throttles: list[Throttle] | None = None,
    installs: Installs | None = None,
    state: FollowState | None = None,
    pauses: Pauses | None = None,
) -> PullResult | None:
    """Pull the newest version of ``spec.name`` if it is newer than ``current``,
    from every reachable peer that offers it (joining a push of that very
    version already under way, with ``installs``)."""
    have = baseline(home, spec)
    unreached: list[str] = []  # named if a file has no source (a multi-host version's host gone)
    conns = await finder.connect_all(None, unreached)
    try:
        offer = await choose_source(home, conns, spec.name, None, accept_of(spec))
        offer.unreached.extend(unreached)
    except NotFound:
        if state is None:
            raise
        await stream_once(home, finder, spec, progress, have, throttles, state, pauses)
        raise
    if have is not None and offer.manifest.version <= have:
        await offer.aclose()
        if state is not None:
            await stream_once(home, finder, spec, progress, have, throttles, state, pauses)
        return None
    if state is not None:
        state.streaming, state.offered = False, 0
        state.heard.clear()
    run = partial(
        install,
        home,
        spec,
        offer,
        progress,
        serving=serving,
        partials=partials,
        throttles=throttles,
        state=state,
        pauses=pauses,
    )
    if installs is None:
        return await run()
    if installs.busy(offer.manifest.root):
        await offer.aclose()  # the running pull has its own sources
    return await installs.run(offer.manifest.root, run)


async def stream_once(
    home: Home,
    finder: Finder,
    spec: FollowSpec,
    progress: Callable[[str], Progress],
    have: int | None,
    throttles: list[Throttle] | None,
    state: FollowState,
    pauses: Pauses | None = None,
) -> None:
    """No newer finished version: prefetch the finished files of a newer one
    still being written (issue 21), into the partial copy its finished
    version's pull will use. Nothing is committed, ``current`` never moves
    and no hook runs here. An in-progress manifest older (by its signed
    sequence) than one already taken for that version is ignored, and at
    most MAX_STREAM_UPDATES are taken per version."""
    conns = await finder.connect_all(None)
    offer = await choose_in_progress(home, conns, spec.name, accept_of(spec), have)
    if offer is None:
        state.streaming, state.offered = False, 0
        return
    manifest = offer.manifest
    assert manifest.in_progress is not None
    if manifest.in_progress != state.offered:  # long polls wait for a change from this
        state.offered = manifest.in_progress
        state.heard.clear()
    key = (manifest.publisher.key, manifest.version)
    seen = state.prefetched.get(key, 0)
    if manifest.in_progress <= seen or len(state.prefetched) > MAX_STREAMED_VERSIONS:
        state.streaming = manifest.in_progress == seen  # the same set: still being written
        await offer.aclose()
        return
    state.streaming = True
    target = spec.dir / spec.name / str(manifest.version)
    if target.exists():  # installed already (or something else is there): nothing to add
        await offer.aclose()
        return
    tracker = progress(f"{spec.name}@{manifest.version} (in progress)")
    with (pauses or Pauses()).pulling(spec.name, f"{spec.name}@{manifest.version}"):
        await prefetch(home, offer, target, tracker, throttles=throttles)
    state.prefetched[key] = manifest.in_progress  # after it: a failed one is tried again
    state.again = True


MAX_STREAMED_VERSIONS: Final = 64  # versions whose sequence a follower remembers


def watch_sources(progress: object, sources: list[Source]) -> None:
    """Hand a pull's sources to a progress that shows them (the daemon's
    status: each transfer's peers); other progress displays have no ``watch``."""
    watch = getattr(progress, "watch", None)
    if watch is not None:
        watch(sources)


async def install(
    home: Home,
    spec: FollowSpec,
    offer: Offer,
    progress: Callable[[str], Progress],
    serving: Callable[[], set[bytes]] | None = None,
    partials: Partials | None = None,
    throttles: list[Throttle] | None = None,
    hints: Sequence[Hint] = (),
    state: FollowState | None = None,
    pauses: Pauses | None = None,
) -> PullResult:
    """Pull the version ``offer`` chose (a swarm) into ``DIR/NAME/<version>``
    (a one-file checkpoint keeps its file name inside it); if it is the
    newest, point ``current`` at it and run the hook; then apply retention.
    Takes ownership of the offer's connections. A pause (``pauses``) stops
    the pull itself (``Paused``), never the switch or the hook after it."""
    manifest, sources, version = offer.manifest, offer.sources, offer.manifest.version
    root = spec.dir / spec.name
    target = root / str(version)
    # A one-file checkpoint lands inside its version directory; a directory
    # checkpoint *is* the version directory (renamed into place whole).
    (target if manifest.kind == "file" else root).mkdir(parents=True, exist_ok=True)
    dest = target / manifest.files[0].path if manifest.kind == "file" else target
    log.info(
        "pulling name=%s version=%d from=%s",
        spec.name,
        version,
        ",".join(f"{s.peer.short}/{s.conns[0].route}" for s in sources),
    )
    tracker = progress(f"{spec.name}@{version}")
    watch_sources(tracker, sources)  # status --json: the transfer's peers
    try:
        with (pauses or Pauses()).pulling(spec.name, f"{spec.name}@{version}"):
            result = await pull_offer(
                home,
                offer,
                dest,
                progress=tracker,
                throttles=throttles,
                partials=partials,
                hints=hints,
            )
    finally:
        await offer.aclose()  # a pull paused before it started owns it yet
    log.info(
        "pulled name=%s version=%d downloaded=%d reused=%d seconds=%.2f sources=%s",
        spec.name,
        version,
        result.bytes_downloaded,
        result.bytes_reused,
        result.seconds,
        ",".join(f"{str(p['id']).split('-')[0]}:{p['bytes']}" for p in result.peers),
    )
    lock = state.lock if state is not None else trio.Lock()
    async with lock:  # a hand switch (``switch``) waits, or is waited for
        have = baseline(home, spec)
        old = current_version(root)
        refusal = publisher_refusal(home, manifest, accept_of(spec))
        if refusal is not None:  # trust changed since the pull committed
            log.warning('not installed name=%s version=%d error="%s"', spec.name, version, refusal)
            raise refusal
        if state is not None:
            state.last_version = max(version, state.last_version or version)
        held = pinned(root)
        if held is not None and held != version:
            log.info("kept name=%s version=%d (current is pinned at %d)", spec.name, version, held)
        elif (have is None or version > have) and old != version:
            file = manifest.files[0].path if manifest.kind == "file" else None
            repoint(root, version, file)
            log.info('current name=%s version=%d path="%s"', spec.name, version, dest)
            await run_hook(spec, version, result.publisher, dest, state)
    protect = {version} | {v for v in (old, pinned(root)) if v is not None}
    busy = serving() if serving is not None else set()
    if busy:  # never delete a version a peer is reading from us right now
        protect |= {
            int(p.name)
            for p in root.iterdir()
            if p.name.isdigit() and home.catalog.roots_under(p) & busy
        }
    deleted = await trio.to_thread.run_sync(retain, root, spec.keep, protect)
    for gone in deleted:
        home.catalog.forget_location(root / str(gone))
    if deleted:
        log.info("retention name=%s deleted=%s", spec.name, ",".join(map(str, deleted)))
    return result


async def follow(
    home: Home,
    finder: Finder,
    spec: FollowSpec,
    progress: Callable[[str], Progress],
    *,
    on_corrupt: Callable[[], None] | None = None,
    serving: Callable[[], set[bytes]] | None = None,
    partials: Partials | None = None,
    throttles: list[Throttle] | None = None,
    installs: Installs | None = None,
    state: FollowState | None = None,
    pauses: Pauses | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow ``spec.name`` until cancelled (what happened: in ``state``).
    While ``pauses`` holds the name, nothing is checked or pulled; a pause
    stops a running pull (its verified chunks kept for the next one)."""
    task_status.started()
    idle = MDNS_POLL_SECONDS if finder.browser is not None else POLL_SECONDS
    state = state if state is not None else FollowState(spec)
    pauses = pauses if pauses is not None else Pauses()
    polls = Polls()  # a round that finds what the last one found logs it at DEBUG
    while True:
        if pauses.paused(spec.name):
            log.info("follow paused name=%s", spec.name)
            await pauses.wait_resumed(spec.name)
            log.info("follow resumed name=%s", spec.name)
        state.last_check = time.time()
        stopped = False  # by a pause: once resumed, go on at once (no poll wait)
        try:
            with polling(polls):
                await check_once(
                    home, finder, spec, progress, serving, partials, throttles, installs, state,
                    pauses,
                )  # fmt: skip
            state.last_ok_at = time.time()
        except* Paused:
            stopped = True  # the loop waits for the resume
        except* ChunkCorrupt as group:
            log.error('follow failed name=%s error="%s"', spec.name, first_leaf(group))
            state.failed(first_leaf(group))
            if on_corrupt is not None:
                on_corrupt()
        except* (Expired, Equivocation) as group:  # a frozen or forked feed: say so loudly
            log.warning('follow refused name=%s error="%s"', spec.name, first_leaf(group))
            state.failed(first_leaf(group))
        except* P2pckptError as group:
            outcome = str(first_leaf(group))
            level = polls.level(("follow check", outcome))
            log.log(level, 'follow check name=%s result="%s"', spec.name, outcome)
            state.failed(first_leaf(group))
        except* OSError as group:
            log.error('follow failed name=%s error="%s"', spec.name, first_leaf(group))
            state.failed(first_leaf(group))
        polls.next_round()
        if stopped or pauses.paused(spec.name):
            continue
        if state.again:  # files finished (or the version did) while that prefetch ran
            state.again = False
            continue
        wait = STREAM_POLL_SECONDS if state.streaming else idle
        with trio.move_on_after(wait) as waiting:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_woken, finder, nursery.cancel_scope)
                # Only while a version is being written: a long poll holds a
                # connection on the seeder, and a fleet of followers each
                # holding one all the time would fill its MAX_CONNECTIONS.
                # The first finished shard is found by the poll (or mDNS).
                if state.streaming:
                    nursery.start_soon(
                        _told, finder, spec.name, state, nursery.cancel_scope, waiting
                    )


async def _woken(finder: Finder, scope: trio.CancelScope) -> None:
    """Return when mDNS says a peer's catalog changed (never, without mDNS)."""
    if finder.browser is not None:
        await finder.browser.changed()
    else:
        await trio.sleep_forever()
    scope.cancel()


async def _told(
    finder: Finder,
    name: str,
    state: FollowState,
    scope: trio.CancelScope,
    waiting: trio.CancelScope,
) -> None:
    """Return when a peer that speaks "progress-wait" says the in-progress
    manifest of ``name`` it offers changed (a shard finished, or the version
    was published whole; issue 21): one long poll per peer, the wait
    between two checks, instead of finding out at the next check. When
    every peer holds one, the check waits for them (``waiting``, up to the
    servers' MAX_PROGRESS_WAIT, then a check anyway) instead of polling
    every STREAM_POLL_SECONDS: one held connection per peer, not a round of
    handshakes twice a second on the trainer's node. Older peers, and any
    long poll that fails, leave the check to its poll."""
    try:
        conns = await finder.connect_all(None)
    except P2pckptError:
        await trio.sleep_forever()
    if conns and all(PROGRESS_WAIT in c.features for c in conns):
        waiting.deadline = max(waiting.deadline, trio.current_time() + MAX_PROGRESS_WAIT)
    changed = False

    async def ask(conn: PeerConnection) -> None:
        nonlocal changed
        if PROGRESS_WAIT not in conn.features:
            return
        # What this peer last said, else what the last check found: a stale
        # answer (say "none", heard before this version was offered) would
        # hold the poll through the very change it waits for.
        after = state.heard.get(conn.peer, state.offered)
        try:
            now = await await_progress(conn, name, after, PROGRESS_TIMEOUT)
        except (P2pckptError, OSError) as exc:
            log.debug('long poll ended peer=%s error="%s"', conn.label, exc)
            waiting.deadline = min(waiting.deadline, trio.current_time() + STREAM_POLL_SECONDS)
            return
        if now == after:  # its wait ended with nothing new (or it does not wait): no news
            return
        state.heard[conn.peer] = now
        changed = True
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(ask, conn)
    finally:
        for conn in conns:
            await conn.aclose()
    if not changed:
        await trio.sleep_forever()
