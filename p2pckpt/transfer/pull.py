"""The puller: fetch one signed version into DEST from every peer that has it.

Order of trust (SECURITY.md §1.1): the transport peer must be in our trust
store; the manifest must carry a valid signature of a publisher we accept
(``Accept``: the publishers named, else peers trusted with "publish", R-64),
name what we asked for, not roll "latest" back, and, asked for "latest",
not have passed its signed expiry (R-21); two different manifests for one
publisher's name@version offered at once refuse the pull (R-20); every
chunk must hash to its manifest entry before it is written. That last rule
is what lets any peer, a fellow puller included, serve us chunks. Trust is
read live: a source removed from the trust store mid-pull is dropped, and a
publisher removed stops the pull before anything is committed (R-63).

A swarm pull (issue 5): every peer offering the chosen version is a
source, each over ``streams`` connections. A source first says which chunks
it holds (``Have``; a source that is itself still pulling is asked again
about every HAVE_POLL seconds), then each connection keeps up to PIPELINE
requests in flight, taking chunks from the pure ``Scheduler`` (rarest
first, windows sized by measured speed, endgame duplicates). Each
connection hands received chunks to its writer task, which hashes and
writes them in a worker thread. A chunk that fails verification bans its
source for this pull (its chunks go to the others); a source that vanishes
has its chunks reassigned. The pull fails only when no source is left that
can supply what is missing; the journal makes the next run resume.

A selective pull (issue 19, ``include``/``exclude``: ``manifest.select``)
stages, fetches and commits only the files selected, each verified against
the whole version's signed manifest; DEST is catalogued with its selection.
Pulled again into a partial copy of the same version, the selection grows
by what DEST holds already (which is reused), as ``hf download`` adds files.

Modules: ``choose`` picks the version and its sources (and says why a
publisher is refused); ``fill`` fills the staging copy (local copies, then
the swarm); this one checks DEST (``dest_plan``, also the dry run's),
guards trust while filling, and commits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, Literal

import trio

from p2pckpt.errors import BadSignature, DestinationExists, RemoteProtocolError
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.manifest.select import Selection, select, union
from p2pckpt.store.staging import Staging
from p2pckpt.store.verify import compare
from p2pckpt.transfer.choose import Accept as Accept
from p2pckpt.transfer.choose import Offer as Offer
from p2pckpt.transfer.choose import choose_source as choose_source
from p2pckpt.transfer.choose import publisher_refusal
from p2pckpt.transfer.fill import Found, dial_hint, discovered, fill
from p2pckpt.transfer.fill import Hint as Hint
from p2pckpt.transfer.fill import Progress as Progress
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.transfer.swarm import Source
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.pull")

DEFAULT_STREAMS: Final = 2
TRUST_RECHECK: Final = 0.25  # how often a running pull looks at the trust store


@dataclass(frozen=True)
class PullResult:
    name: str
    version: int
    dest: str
    publisher: str
    root: str
    bytes_total: int
    bytes_downloaded: int
    bytes_reused: int
    bytes_wire: int  # what the downloaded chunks took on the wire (less where packed)
    chunks: int
    streams: int
    seconds: float
    peers: list[dict[str, object]]
    files: int = 0  # files at DEST (of a partial copy: those selected)
    selection: list[str] | None = None  # a partial copy's files; None: the whole version


@dataclass(frozen=True)
class DestPlan:
    """What a pull does at DEST: create it ("new"), find the version there
    ("present"), update our own copy in place ("replace"), or take the
    place of an empty directory ("empty"); and the files it will hold
    (None: every file)."""

    dest: Path
    there: Literal["new", "present", "replace", "empty"]
    selection: Selection


class NoProgress:
    def start(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


def default_dest(manifest: Manifest) -> Path:
    if manifest.kind == "file":
        return Path.cwd() / manifest.files[0].path
    return Path.cwd() / manifest.name


def pull_result(
    manifest: Manifest,
    dest: Path,
    downloaded: int,
    reused: int,
    sources: list[Source],
    started: float,
    selection: Selection = None,
) -> PullResult:
    entries = [f for f in manifest.files if selection is None or f.path in selection]
    return PullResult(
        name=manifest.name,
        version=manifest.version,
        dest=str(dest),
        publisher=str(manifest.publisher),
        root=manifest.root.hex(),
        bytes_total=sum(f.size for f in entries),
        bytes_downloaded=downloaded,
        bytes_reused=reused,
        bytes_wire=sum(s.wire for s in sources),
        chunks=manifest.chunk_count,
        streams=sum(len(s.conns) for s in sources),
        seconds=time.monotonic() - started,
        peers=[s.report() for s in sources],
        files=len(entries),
        selection=None if selection is None else sorted(selection),
    )


async def pull(
    home: Home,
    conns: list[PeerConnection],
    name: str,
    version: int | None,
    dest: Path | None = None,
    streams: int = DEFAULT_STREAMS,
    progress: Progress | None = None,
    *,
    throttles: list[Throttle] | None = None,
    partials: Partials | None = None,
    accept: Accept | None = None,
    found: Found | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    into: bool = False,
    unreached: Sequence[str] = (),
) -> PullResult:
    """Pull ``name`` (newest, or ``@version``) from every one of ``conns``
    that offers the newest version ``accept`` takes (a swarm pull); only
    the files ``include``/``exclude`` select, if given. Takes ownership of
    the connections: all are closed on return. ``into``: DEST was written
    with a trailing slash (see ``place``); ``unreached``: peers tried and
    not reached (``Finder.unreached``), named if a file has no source."""
    started = time.monotonic()
    offer = await choose_source(home, conns, name, version, accept)
    offer.unreached.extend(unreached)
    return await pull_offer(
        home,
        offer,
        dest,
        streams,
        progress,
        throttles=throttles,
        partials=partials,
        found=found,
        started=started,
        include=include,
        exclude=exclude,
        into=into,
    )


async def pull_offer(
    home: Home,
    offer: Offer,
    dest: Path | None = None,
    streams: int = DEFAULT_STREAMS,
    progress: Progress | None = None,
    *,
    throttles: list[Throttle] | None = None,
    partials: Partials | None = None,
    hints: Sequence[Hint] = (),
    found: Found | None = None,
    started: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    into: bool = False,
) -> PullResult:
    """Pull the version ``offer`` chose from its sources (of its files,
    those ``include``/``exclude`` select: ``manifest.select``) into
    ``dest`` (see ``place``; default: ``./FILE`` or ``./NAME``).

    ``throttles`` cap the download rate (per pull, per daemon); with
    ``partials``, chunks verified so far are served to other pullers while
    this pull runs; ``hints`` are peers (a push's other targets) dialled
    once the pull starts and used as sources as soon as they hold chunks;
    ``found`` reports more such peers while the pull runs (``sharing``).
    Takes ownership of the offer's connections: all are closed on return.
    """
    started = time.monotonic() if started is None else started
    manifest, envelope, sources = offer.manifest, offer.envelope, offer.sources
    try:
        wanted = select(manifest, include, exclude)  # matching no file: refused here
        plan = await dest_plan(home, dest, manifest, wanted, into)
        dest, there, chosen = plan.dest, plan.there, plan.selection
        if there == "present":
            _present(home, plan, manifest, envelope)
            total = pull_result(manifest, dest, 0, 0, sources, started, chosen).bytes_total
            return pull_result(manifest, dest, 0, total, sources, started, chosen)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest, manifest, envelope, chosen)
        try:
            downloaded, reused = await _fetch(
                home, offer, staging, streams, progress, throttles or [], partials, hints, found
            )
            transferred = time.monotonic()
            if there == "empty":
                _remove_empty(dest, manifest)
            await trio.to_thread.run_sync(staging.commit, there == "replace")
            log.info(
                "committed name=%s version=%d transfer_seconds=%.2f commit_seconds=%.2f"
                " (commit is fsync + rename)",
                manifest.name,
                manifest.version,
                transferred - started,
                time.monotonic() - transferred,
            )
        finally:
            staging.close()
        if there in ("replace", "empty"):  # the old version's bytes are gone from DEST now
            home.catalog.forget_location(dest)
        home.catalog.add(manifest, envelope, dest, "pulled", chosen)
        result = pull_result(manifest, dest, downloaded, reused, sources, started, chosen)
        _log_dropped(manifest, sources)
        return result
    finally:
        await offer.aclose()


async def prefetch(
    home: Home,
    offer: Offer,
    dest: Path,
    progress: Progress | None = None,
    *,
    throttles: list[Throttle] | None = None,
    streams: int = DEFAULT_STREAMS,
) -> int:
    """Fetch the finished files an in-progress manifest names (issue 21) into
    the partial copy beside ``dest``, and stop there: never commit it, never
    catalogue it, never serve it to others. The finished version's pull at
    the same ``dest`` then keeps every file it covers with identical chunks
    (``Staging.previous_chunks``: by hash, verified again) and drops the rest;
    a trainer that died leaves only this partial copy, which a later pull of
    the same files reuses. Returns the bytes downloaded. Takes ownership of
    the offer's connections."""
    manifest = offer.manifest
    assert manifest.in_progress is not None, "prefetch is for in-progress manifests"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest, manifest, offer.envelope)
        try:
            downloaded, _ = await _fetch(
                home, offer, staging, streams, progress, throttles or [], None, (), None
            )
        finally:
            staging.close()
        log.info(
            "prefetched name=%s version=%d in_progress=%d files=%d downloaded=%d (not committed)",
            manifest.name,
            manifest.version,
            manifest.in_progress,
            len(manifest.files),
            downloaded,
        )
        return downloaded
    finally:
        await offer.aclose()


async def dest_plan(
    home: Home, dest: Path | None, manifest: Manifest, wanted: Selection, into: bool = False
) -> DestPlan:
    """What a pull of ``wanted`` (None: every file) does at ``dest`` (None:
    the default; ``into``: written with a trailing slash, see ``place``);
    writes nothing (the dry run asks it too). A partial copy of this very
    version catalogued at DEST adds its files to the selection (a pull of
    the rest reuses them)."""
    if dest is None:
        dest = default_dest(manifest)
    else:
        dest = place(home, dest.expanduser().absolute(), manifest, into)
    dest = dest.expanduser().absolute()
    if not (dest.exists() or dest.is_symlink()):
        return DestPlan(dest, "new", wanted)
    held = [
        e
        for e in ([] if dest.is_symlink() else home.catalog.at_location(dest))
        if e.root == manifest.root and e.origin == "pulled"
    ]
    chosen = union(wanted, held[0].selected) if held else wanted
    return DestPlan(dest, await _at_dest(home, dest, manifest, chosen), chosen)


def place(home: Home, dest: Path, manifest: Manifest, into: bool) -> Path:
    """Where a pull given ``-o DEST`` writes, as ``cp`` does:

    * DEST an existing directory, for a one-file checkpoint: ``DEST/FILE``;
    * ``DEST/`` (a trailing slash, ``into``) naming an existing directory that
      holds something and is not a copy of this name pulled here:
      ``DEST/NAME``;
    * otherwise DEST itself: a new path, an empty directory (replaced by the
      checkpoint), or our own copy of this name (updated in place).
    """
    if dest.is_symlink() or not dest.is_dir():
        return dest
    if manifest.kind == "file":
        return dest / manifest.files[0].path
    if into and _holds_something(dest):
        ours = any(
            e.origin == "pulled" and e.name == manifest.name for e in home.catalog.at_location(dest)
        )
        if not ours:
            return dest / manifest.name
    return dest


def _empty_dir(dest: Path, manifest: Manifest) -> bool:
    """A directory checkpoint, and DEST an empty directory (not a link to one)."""
    return (
        manifest.kind == "dir"
        and not dest.is_symlink()
        and dest.is_dir()
        and not _holds_something(dest)
    )


def _holds_something(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(True for _ in entries)


def _remove_empty(dest: Path, manifest: Manifest) -> None:
    """Take away the empty directory a checkpoint is about to be renamed onto
    (``rmdir``: if anything appeared in it meanwhile, it stays, and the pull
    stops before its commit)."""
    try:
        os.rmdir(dest)
    except FileNotFoundError:
        pass
    except OSError:
        raise DestinationExists(
            f"{dest} was an empty directory and is not anymore; nothing was written to it:"
            " empty it or choose another -o, and run the same pull again"
        ) from None


async def _at_dest(
    home: Home, dest: Path, manifest: Manifest, selection: Selection
) -> Literal["replace", "present", "empty"]:
    """What ``dest``, which exists, is: an empty directory, which a directory
    checkpoint takes the place of ("empty", as ``cp -r`` fills one); our own
    pulled copy of another version of this name, or of this one damaged or
    partial, updated in place ("replace"), or this very version (its
    ``selection``), verified ("present"); anything else raises
    ``DestinationExists``."""
    if _empty_dir(dest, manifest):
        return "empty"
    # Only a byte-for-byte match counts as "already there".
    differs = await trio.to_thread.run_sync(partial(compare, dest, manifest, selection=selection))
    if differs and _replaceable(home, dest, manifest, differs.extra):
        return "replace"
    if differs:
        raise DestinationExists(
            f"{dest} already exists and is not {manifest.name}@{manifest.version}"
            f" ({differs.summary()}); remove it or choose another -o"
        )
    return "present"


def _present(home: Home, plan: DestPlan, manifest: Manifest, envelope: bytes) -> None:
    """The version (its selection) is at DEST already: catalogue it, and
    clear what a crash between the commit rename and the cleanup left."""
    dest = plan.dest
    log.info(
        'already present name=%s version=%d path="%s" (verified)',
        manifest.name,
        manifest.version,
        dest,
    )
    leftover = Staging(dest, manifest, envelope)
    if leftover.belongs_here():  # a crash between rename and cleanup
        leftover.discard()
    rows = home.catalog.at_location(dest)
    if any(e.root != manifest.root or e.selection != _packed(plan) for e in rows):
        home.catalog.forget_location(dest)  # a crash right after a swap
    home.catalog.add(manifest, envelope, dest, "pulled", plan.selection)


def _packed(plan: DestPlan) -> str | None:
    from p2pckpt.manifest.select import pack

    return pack(plan.selection)


async def _fetch(
    home: Home,
    offer: Offer,
    staging: Staging,
    streams: int,
    progress: Progress | None,
    throttles: list[Throttle],
    partials: Partials | None,
    hints: Sequence[Hint],
    found: Found | None,
) -> tuple[int, int]:
    """Transfer under ``_guard``; returns (downloaded, reused). A publisher
    no longer accepted when it ends refuses the pull before any commit."""
    joiners = [partial(dial_hint, home, peer, addr, streams) for peer, addr in hints]
    discover = None if found is None else discovered(found, home, streams)
    revoked: list[BadSignature] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_guard, home, offer, revoked, nursery.cancel_scope)
        downloaded, reused = await fill(
            staging,
            offer.sources,
            streams,
            progress or NoProgress(),
            throttles,
            partials,
            joiners,
            home.catalog,
            discover,
            offer.unreached,
        )
        nursery.cancel_scope.cancel()
    refusal = revoked[0] if revoked else publisher_refusal(home, offer.manifest, offer.accept)
    if refusal is not None:  # trust changed under the pull: commit nothing
        raise refusal
    return downloaded, reused


def _log_dropped(manifest: Manifest, sources: list[Source]) -> None:
    for bad in (s for s in sources if s.problem):
        log.warning(
            'source dropped name=%s version=%d peer=%s status=%s error="%s"',
            manifest.name,
            manifest.version,
            bad.peer.short,
            "bad" if bad.bad else "lost",
            bad.problem,
        )


def _replaceable(home: Home, dest: Path, manifest: Manifest, extra: list[str]) -> bool:
    """Whether ``dest`` is a copy we pulled of another version of this name
    from this publisher, or of this very version and damaged since (issue
    18: repaired, its sound chunks and pieces reused), not a link, holding
    no file of anyone else's (so a pull may update it in place without
    losing anything but that version)."""
    rows = [] if dest.is_symlink() else home.catalog.at_location(dest)
    for e in rows:
        if (
            e.origin == "pulled"
            and e.name == manifest.name
            and e.publisher == manifest.publisher.key
            and (e.version != manifest.version or e.root == manifest.root)
        ):
            old = e.manifest()
            ours = {f.path for f in old.files}
            return old.kind == manifest.kind and all(path in ours for path in extra)
    return False


async def _guard(
    home: Home, offer: Offer, revoked: list[BadSignature], scope: trio.CancelScope
) -> None:
    """While a pull runs, follow the trust store (R-63): a source no longer
    trusted is cut off (its chunks go to the others); a publisher no longer
    accepted stops the pull (``revoked``), the partial copy kept."""
    while True:
        await trio.sleep(TRUST_RECHECK)
        trust = home.trust
        for src in offer.sources:
            if src.conns and src.peer != home.key.peer_id and trust.get(src.peer) is None:
                log.warning("source no longer trusted peer=%s (dropped)", src.peer.short)
                for conn in list(src.conns):
                    await conn.aclose()
        refusal = publisher_refusal(home, offer.manifest, offer.accept)
        if refusal is not None:
            log.warning(
                'pull stopped name=%s version=%d error="%s"',
                offer.manifest.name,
                offer.manifest.version,
                refusal,
            )
            revoked.append(refusal)
            scope.cancel()
            return


async def list_remote(conn: PeerConnection) -> list[m.VersionInfo]:
    """What one peer offers."""
    reply = await conn.request(m.ListRequest())
    if not isinstance(reply, m.ListResponse):
        raise RemoteProtocolError("expected a version list")
    return list(reply.versions)
