"""Watch a folder and publish each child once it is complete (``[[watch]]``).

Theory of operation. Every child of ``spec.path`` (a file, or a directory
tree) is a candidate checkpoint with a state ``(snap, quiet_since, due)``:
its last :class:`Snapshot`, since when nothing was seen changing, and when
to look again. Two kinds of evidence reset ``quiet_since``: an inotify event
inside the child (immediate but only a hint: events can be lost) and a
snapshot that differs from the previous one (the ground truth). Events cause
no I/O; they only move ``due`` to a moment after the burst, so a writer
issuing thousands of writes costs a few snapshots, not thousands. One loop
sleeps until the earliest ``due`` (or an event that makes something due
earlier), snapshots due children in a worker thread, asks
``completion.is_complete`` and publishes complete children one at a time,
hashing in a worker thread.

Events come from inotify (``daemon/inotify.py``: no thread, no polling).
Without it (not Linux, no instance left) the folder is rescanned every
POLL_SECONDS; with it, a rescan and re-check every BACKSTOP_SECONDS cover
events lost to a queue overflow, to a directory created just before its
watch, or never sent (writes from another host to a network mount).

A child is published once: children already in the catalog (origin
"published", location == the child's path), or retired from it by
retention, are skipped, at start and right before each publish. Retention
(``keep = K``) retires all but the newest K published versions from this
folder after each publish, sparing any a peer is reading; their files stay.
Nothing here ends the watcher: a publish that fails
because the child changed or vanished is retried after it settles again
(with back-off); one refused for good (same version, other content; a link
inside) waits until the child changes.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from p2pckpt.config import WatchSpec
from p2pckpt.daemon import inotify
from p2pckpt.daemon.completion import (
    Snapshot,
    file_grace,
    finished_files,
    is_candidate_name,
    is_complete,
    settle_seconds,
    should_offer,
    unchanged_since,
    version_from_name,
)
from p2pckpt.daemon.inotify import Inotify
from p2pckpt.daemon.snapshot import gather
from p2pckpt.errors import ConfigError, ManifestError, SourceChanged
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.publish import publish, publish_in_progress
from p2pckpt.store.catalog import CATALOG_FILE, Catalog
from p2pckpt.transfer.progress_book import ProgressBook

log = logging.getLogger("p2pckpt.watch")

DEBOUNCE: Final = 0.2  # seconds after an event before looking (coalesces bursts)
POLL_SECONDS: Final = 5.0  # without inotify: how often the folder is rescanned
BACKSTOP_SECONDS: Final = 60.0  # with inotify: re-check of children waiting for an event
MAX_BACKOFF: Final = 300.0


class _Stopped(Exception):
    """Raised inside an abandoned publish thread to stop its hashing."""


async def _publish_in_thread(home: Home, path: Path, name: str, version: int | None) -> Manifest:
    """``publish`` in a worker thread with its own catalog connection (SQLite
    connections belong to the thread that opened them). Cancelling returns at
    once; the abandoned thread stops hashing at its next chunk."""
    stop = threading.Event()

    def on_bytes(_n: int) -> None:
        if stop.is_set():
            raise _Stopped

    def work() -> Manifest:
        catalog = Catalog(home.path / CATALOG_FILE)
        try:
            return publish(replace(home, catalog=catalog), path, name, version, on_bytes=on_bytes)
        finally:
            catalog.close()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    finally:
        stop.set()


@dataclass
class WatchState:
    """What a watched folder last did, for ``status``."""

    spec: WatchSpec
    last_version: int | None = None
    last_published: float | None = None
    last_error: str = ""
    last_error_at: float | None = None

    def failed(self, path: Path, error: BaseException) -> None:
        self.last_error, self.last_error_at = f"{path}: {error}", time.time()

    def as_status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "path": str(self.spec.path),
            "last_version": self.last_version,
            "last_published": self.last_published,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


@dataclass
class _Candidate:
    path: Path
    quiet_since: float
    due: float
    snap: Snapshot | None = None
    failed: Snapshot | None = None  # publishing exactly this state was refused for good
    failures: int = 0
    told: str = ""  # the problem last logged, so each is logged once
    # streaming publish (issue 21): since when each file looked as it does,
    # what the last in-progress manifest offered, how many were signed
    since: dict[str, float] = field(default_factory=dict)
    offered: frozenset[str] = frozenset()
    updates: int = 0
    last_offer: float = -math.inf
    sequence: int = 0


def _order(name: str) -> tuple[bool, int, str]:
    """Publish in step order, so the newest ends up last (and "latest")."""
    version = version_from_name(name)
    return version is None, version or 0, name


class _Watcher:
    """The state of one watched folder; see the module docstring."""

    def __init__(
        self,
        home: Home,
        spec: WatchSpec,
        on_published: Callable[[Manifest], Awaitable[None]] | None,
        serving: Callable[[], set[bytes]] | None,
        state: WatchState | None = None,
        book: ProgressBook | None = None,
    ) -> None:
        self.home, self.spec, self.on_published = home, spec, on_published
        self.book = book if spec.stream else None
        self.state = state if state is not None else WatchState(spec)
        self.serving = serving
        self.root = spec.path.expanduser().absolute()
        self.settle = settle_seconds(spec)
        self.baseline = max(DEBOUNCE, self.settle / 10)  # after an event: snapshot again this soon
        self.cands: dict[str, _Candidate] = {}
        self.done: set[str] = set()
        self.notify: Inotify | None = None
        self.root_wd: int | None = None
        self.watches: dict[int, tuple[str, Path]] = {}  # wd -> (child, directory)
        self.rescan_at = self.deadline = -math.inf
        self.unlisted = False
        self.wake = trio.Event()

    @property
    def backstop(self) -> float:
        return BACKSTOP_SECONDS if self.root_wd is not None else POLL_SECONDS

    def _published(self) -> set[str]:
        """Locations never to publish again: in the catalog, or retired from it."""
        held = {e.location for e in self.home.catalog.summaries() if e.origin == "published"}
        return held | self.home.catalog.retired_locations()

    def _retain(self) -> None:
        """Retire all but the newest ``keep`` versions published from this folder."""
        if self.spec.keep <= 0:
            return
        mine = sorted(
            (
                e
                for e in self.home.catalog.summaries()
                if e.origin == "published"
                and e.name == self.spec.name
                and Path(e.location).parent == self.root
            ),
            key=lambda e: e.version,
            reverse=True,
        )
        busy = self.serving() if self.serving is not None else set()
        for entry in mine[self.spec.keep :]:
            if entry.root in busy:
                continue  # a peer is reading it: retire it after a later publish
            self.home.catalog.retire(entry.root)
            log.info(
                'retired name=%s version=%d path="%s" (files left in place)',
                entry.name,
                entry.version,
                entry.location,
            )

    async def _rescan(self) -> None:
        """List the folder: new children become candidates, published ones are skipped."""
        now = trio.current_time()
        if self.notify is not None and self.root_wd is None:
            self.root_wd = self.notify.add(self.root)  # before listing: nothing slips between
        self.rescan_at = now + self.backstop  # also finds children no event told of (NFS)
        try:
            names = await trio.to_thread.run_sync(os.listdir, self.root, abandon_on_cancel=True)
        except OSError as exc:
            if not self.unlisted:  # said once until it is back (an unmounted share)
                log.warning('cannot list watched folder path="%s" error="%s"', self.root, exc)
            self.unlisted = True
            return
        self.unlisted = False
        published = self._published()
        for name in names:
            if name in self.done or name in self.cands or not is_candidate_name(name, self.spec):
                continue
            if str(self.root / name) in published:
                self.done.add(name)
            else:
                self.cands[name] = _Candidate(self.root / name, now, now)

    def _watch(self, child: str, path: Path) -> None:
        if self.notify is None or child in self.done or not is_candidate_name(child, self.spec):
            return
        wd = self.notify.add(path)  # the same wd again for a path already watched
        if wd is not None:
            self.watches[wd] = (child, path)

    def _unwatch(self, child: str) -> None:
        for wd in [wd for wd, (c, _) in self.watches.items() if c == child]:
            del self.watches[wd]
            if self.notify is not None:
                self.notify.remove(wd)

    def _touch(self, child: str, now: float) -> None:
        """Something changed in ``child``: it is not quiet; look again after the burst."""
        if child in self.done or not is_candidate_name(child, self.spec):
            return
        cand = self.cands.setdefault(child, _Candidate(self.root / child, now, now))
        due = now + self.baseline
        if self.book is not None and now < cand.due < due:
            due = cand.due  # a steady writer must not put off looking at finished files
        cand.quiet_since, cand.due = now, due
        if cand.due < self.deadline:
            self.wake.set()

    def _on_event(self, wd: int, mask: int, name: str, now: float) -> None:
        if mask & inotify.IN_Q_OVERFLOW:  # events were lost: assume everything changed
            self.rescan_at = now
            for child in list(self.cands):
                self._touch(child, now)
            self.wake.set()
        elif wd == self.root_wd and mask & inotify.SELF_GONE:
            log.warning(
                "watched folder %s went away; looking every %.0f s", self.root, POLL_SECONDS
            )
            self.root_wd, self.rescan_at = None, now + POLL_SECONDS
        elif wd == self.root_wd:
            if mask & inotify.IN_ISDIR and mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                self._watch(name, self.root / name)
            sibling = f".{self.spec.marker}"  # FILE.COMPLETE appearing: look at FILE
            if self.spec.complete == "marker" and name.endswith(sibling):
                name = name.removesuffix(sibling)
            self._touch(name, now)
        elif wd in self.watches:
            child, where = self.watches[wd]
            if mask & inotify.IN_IGNORED:
                del self.watches[wd]
            elif mask & inotify.IN_ISDIR and mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                self._watch(child, where / name)
            self._touch(child, now)

    async def _read_events(self, notify: Inotify) -> None:
        while True:
            events = await notify.read()
            now = trio.current_time()
            for wd, mask, name in events:
                self._on_event(wd, mask, name, now)

    async def _check(self, name: str) -> None:
        """Snapshot one due child and publish it if its rule says complete."""
        cand = self.cands[name]
        start = trio.current_time()
        try:
            snap = await trio.to_thread.run_sync(
                gather, cand.path, self.spec, abandon_on_cancel=True
            )
        except OSError as exc:
            log.warning('cannot read path="%s" error="%s"', cand.path, exc)
            cand.due = trio.current_time() + self.backstop
            return
        now = trio.current_time()
        if snap is None:  # gone, or became something we do not publish
            del self.cands[name]
            self._unwatch(name)
            if self.book is not None:
                self.book.withdraw(self.spec.name, cand.path)
            return
        if snap.kind == "dir":
            for rel in ["", *snap.dirs]:
                self._watch(name, cand.path / rel)
        if snap.problem and snap.problem != cand.told:
            log.warning('not publishing path="%s" reason="%s"', cand.path, snap.problem)
        cand.told = snap.problem
        touched = cand.quiet_since > start  # an event came during the snapshot
        before, cand.snap = cand.snap, snap
        if snap != before:
            cand.quiet_since = max(cand.quiet_since, now)
        rule = self.spec.complete
        # Until it is published, even while only its quiet time is missing:
        # the last shard is offered as soon as it is finished (issue 21).
        complete = is_complete(rule, snap, before, start - cand.quiet_since, self.spec)
        streaming = self.book is not None and not complete
        if streaming:
            await self._stream(name, cand, before, snap, now)
        if touched:
            return  # _touch already scheduled the next look
        if snap == cand.failed:
            cand.due = now + self.backstop
        elif complete:
            await self._publish(name, cand, snap)
        elif is_complete(rule, snap, snap, math.inf, self.spec):  # only time is missing
            cand.due = max(cand.quiet_since + self.settle, now + DEBOUNCE)
        else:  # waiting for a marker, a shard, a rename: events will say when
            cand.due = now + self.backstop
        if streaming:  # look again when the next file has been quiet long enough
            soon = [
                t + file_grace(self.spec, snap, p)
                for p, t in cand.since.items()
                if p not in cand.offered
            ]
            soon = [t for t in soon if t > now]
            if soon:
                cand.due = min(cand.due, max(min(soon), now + DEBOUNCE))

    async def _stream(
        self, name: str, cand: _Candidate, before: Snapshot | None, snap: Snapshot, now: float
    ) -> None:
        """Offer the finished files of a child still being written, signed as
        an in-progress manifest (issue 21), if that set changed."""
        assert self.book is not None
        cand.since = unchanged_since(before, snap, cand.since, now)
        finished = finished_files(snap, cand.since, now, self.spec)
        if not should_offer(finished, cand.offered, cand.updates, cand.last_offer, now):
            return
        version = version_from_name(name)
        if version is None:
            version = self.home.catalog.next_version(self.spec.name)  # what publish will take
        sequence = max(cand.sequence + 1, time.time_ns() // 1_000_000)
        home, path, spec_name = self.home, cand.path, self.spec.name

        def work() -> tuple[Manifest, bytes]:
            catalog = Catalog(home.path / CATALOG_FILE)
            try:
                return publish_in_progress(
                    replace(home, catalog=catalog), path, spec_name, version, finished, sequence
                )
            finally:
                catalog.close()

        cand.last_offer = now
        try:
            manifest, envelope = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except (ConfigError, ManifestError, SourceChanged, OSError) as exc:
            log.info('not offered in progress path="%s" error="%s"', cand.path, exc)
            return
        cand.offered, cand.updates, cand.sequence = finished, cand.updates + 1, sequence
        self.book.offer(manifest, envelope, cand.path)
        log.info(
            'offered in progress name=%s version=%d files=%d of=%d sequence=%d path="%s"',
            manifest.name,
            manifest.version,
            len(manifest.files),
            len(snap.files),
            sequence,
            cand.path,
        )

    async def _publish(self, name: str, cand: _Candidate, snap: Snapshot) -> None:
        if str(cand.path) not in self._published():  # else published meanwhile, e.g. by hand
            version = version_from_name(name)
            try:
                manifest = await _publish_in_thread(self.home, cand.path, self.spec.name, version)
            except (ConfigError, ManifestError) as exc:
                log.error('not publishing until it changes path="%s" error="%s"', cand.path, exc)
                self.state.failed(cand.path, exc)
                cand.failed, cand.due = snap, trio.current_time() + self.backstop
                return
            except Exception as exc:  # changed or vanished while hashing, catalog busy, a bug
                now = trio.current_time()
                cand.failures += 1
                delay = min(MAX_BACKOFF, max(self.settle, 1.0) * 2 ** min(cand.failures - 1, 8))
                cand.quiet_since, cand.due = now, now + delay
                expected = isinstance(exc, OSError | SourceChanged)
                msg = 'publish failed path="%s" retry_seconds=%.0f error="%s"'
                log.warning(msg, cand.path, delay, exc, exc_info=not expected)
                self.state.failed(cand.path, exc)
                return
            if self.book is not None:  # the finished version replaces what was in progress
                self.book.retire(self.spec.name, cand.path)
            log.info(
                'published name=%s version=%d path="%s"', manifest.name, manifest.version, cand.path
            )
            self.state.last_version, self.state.last_published = manifest.version, time.time()
            self._retain()
            if self.on_published is not None:
                await self.on_published(manifest)
        self.done.add(name)
        self.cands.pop(name, None)
        self._unwatch(name)

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"watch path {self.root} is not a directory")
        self.notify = Inotify.open()
        try:
            await self._rescan()
            self._retain()  # keep may have been lowered since the last run
            task_status.started()
            async with trio.open_nursery() as nursery:
                if self.notify is not None:
                    nursery.start_soon(self._read_events, self.notify)
                while True:
                    if trio.current_time() >= self.rescan_at:
                        await self._rescan()
                    now = trio.current_time()
                    for name in sorted(
                        (n for n, c in self.cands.items() if c.due <= now), key=_order
                    ):
                        if name in self.cands:
                            await self._check(name)
                    self.wake = trio.Event()
                    self.deadline = min([c.due for c in self.cands.values()] + [self.rescan_at])
                    with trio.move_on_at(self.deadline):
                        await self.wake.wait()
        finally:
            if self.notify is not None:
                self.notify.close()


async def watch_folder(
    home: Home,
    spec: WatchSpec,
    *,
    on_published: Callable[[Manifest], Awaitable[None]] | None = None,
    serving: Callable[[], set[bytes]] | None = None,
    state: WatchState | None = None,
    book: ProgressBook | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish each complete child of ``spec.path`` as ``spec.name``, the
    version taken from the step in its name or counting up; runs until
    cancelled (safe at any moment: an interrupted publish records nothing).

    Ready (``task_status.started()``) once the inotify watch is in place and
    the folder is listed: a child created after that is never missed.
    Publishing happens afterwards, one child at a time, so a terabyte found
    at start does not hold up the daemon. Raises ConfigError if ``spec.path``
    is not a directory; ``on_published`` errors propagate. ``serving`` gives
    the roots peers are reading, which retention spares. With ``spec.stream``
    the finished files of a child still being written are offered in ``book``
    as a signed in-progress manifest (issue 21).
    """
    await _Watcher(home, spec, on_published, serving, state, book).run(task_status)
