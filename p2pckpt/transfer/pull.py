"""The puller: fetch one signed version into DEST from every peer that has it.

Order of trust (SECURITY.md §1.1): the transport peer must be in our trust
store; the manifest must carry a valid signature of a publisher we trust for
"publish", name what we asked for, and not roll "latest" back; every chunk
must hash to its manifest entry before it is written. That last rule is
what lets any peer, a fellow puller included, serve us chunks.

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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from p2pckpt.errors import (
    BadSignature,
    DestinationExists,
    ManifestError,
    NotFound,
    P2pckptError,
    RemoteProtocolError,
    TransferError,
)
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.manifest import Manifest, verify
from p2pckpt.store.catalog import Catalog
from p2pckpt.store.staging import FSYNC_INTERVAL, Staging, check_free_space
from p2pckpt.store.verify import compare
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import PeerConnection, connect_direct
from p2pckpt.transfer.reuse import reuse_local
from p2pckpt.transfer.swarm import NETWORK_ERRORS, Joiner, Source, Swarm
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.pull")

DEFAULT_STREAMS: Final = 2


async def fetch_manifest(
    home: Home, conn: PeerConnection, name: str, version: int | None
) -> tuple[Manifest, bytes]:
    await conn.send(m.ManifestRequest(name, version))
    reply = await conn.receive()
    if not isinstance(reply, m.ManifestResponse):
        raise RemoteProtocolError("expected a manifest")
    manifest = verify(reply.envelope)
    if manifest.publisher != home.key.peer_id:  # our own signature is always ours
        known = home.trust.get(manifest.publisher)
        if known is None:
            raise BadSignature(
                f"{name} is signed by {manifest.publisher.short}, not a publisher we trust"
            )
        if "publish" not in known.roles:
            raise BadSignature(
                f"{name} is signed by {known.name or manifest.publisher.short}, which we trust"
                f" but not with the 'publish' role (p2pckpt trust add {manifest.publisher}"
                " --role publish ...)"
            )
    if manifest.name != name or (version is not None and manifest.version != version):
        raise ManifestError(f"peer answered with {manifest.name}@{manifest.version}")
    home.catalog.check_not_rollback(manifest, asked_latest=version is None)
    same = home.catalog.find(manifest.name, manifest.version, manifest.publisher.key)
    if same is not None and same.root != manifest.root:
        raise ManifestError(
            f"{manifest.publisher.short} signed two different {manifest.name}"
            f"@{manifest.version}; refusing this one"
        )
    home.catalog.note_seen(manifest)
    return manifest, reply.envelope


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


class Progress(Protocol):
    """Callbacks for a progress display."""

    def start(self, name: str, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class Offer:
    """The version chosen for a pull and the peers offering exactly it."""

    manifest: Manifest
    envelope: bytes
    sources: list[Source]

    async def aclose(self) -> None:
        for src in self.sources:
            for conn in src.conns:
                await conn.aclose()


Hint = tuple[PeerId, tuple[str, int]]  # a peer that may join mid-pull, and where


class NoProgress:
    def start(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


def default_dest(manifest: Manifest) -> Path:
    if manifest.kind == "file":
        return Path.cwd() / manifest.files[0].path
    return Path.cwd() / manifest.name


async def choose_source(
    home: Home, conns: list[PeerConnection], name: str, version: int | None
) -> Offer:
    """Ask every connected peer for ``name``; keep the newest version signed by
    a publisher we trust, and every peer offering exactly that version as a
    source (in ``conns`` order; connections to the same peer are grouped).
    The other connections are closed. If nobody qualifies, the most telling
    error is raised."""
    offers: dict[int, tuple[Manifest, bytes]] = {}
    errors: list[P2pckptError] = []

    async def ask(conn: PeerConnection) -> None:
        try:
            offers[id(conn)] = await fetch_manifest(home, conn, name, version)
        except P2pckptError as exc:
            log.info('peer skipped peer=%s error="%s"', conn.label, exc)
            errors.append(exc)

    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(ask, conn)
        if not offers:
            # A refusal that says something (signature, rollback, trust) beats "not found".
            errors.sort(key=lambda e: isinstance(e, NotFound))
            raise errors[0] if errors else NotFound(f"no peer offers {name}")
    except BaseException:
        for conn in conns:
            await conn.aclose()
        raise
    ordered = [offers[id(c)] for c in conns if id(c) in offers]
    manifest, envelope = max(ordered, key=lambda o: o[0].version)  # first of the newest
    sources: dict[PeerId, Source] = {}
    for conn in conns:
        offer = offers.get(id(conn))
        if offer is not None and offer[0].root == manifest.root:
            src = sources.setdefault(conn.peer, Source(conn.peer, [], conn.route, conn.label))
            src.conns.append(conn)
        else:
            await conn.aclose()
    return Offer(manifest, envelope, list(sources.values()))


def pull_result(
    manifest: Manifest,
    dest: Path,
    downloaded: int,
    reused: int,
    sources: list[Source],
    started: float,
) -> PullResult:
    return PullResult(
        name=manifest.name,
        version=manifest.version,
        dest=str(dest),
        publisher=str(manifest.publisher),
        root=manifest.root.hex(),
        bytes_total=manifest.total_bytes,
        bytes_downloaded=downloaded,
        bytes_reused=reused,
        bytes_wire=sum(s.wire for s in sources),
        chunks=manifest.chunk_count,
        streams=sum(len(s.conns) for s in sources),
        seconds=time.monotonic() - started,
        peers=[s.report() for s in sources],
    )


async def _transfer(
    staging: Staging,
    sources: list[Source],
    streams: int,
    progress: Progress,
    throttles: list[Throttle],
    partials: Partials | None,
    joiners: Sequence[Joiner] = (),
    catalog: Catalog | None = None,
) -> tuple[int, int]:
    """Fetch every chunk the partial copy lacks, from local copies first
    (``catalog``), then from the swarm; returns (downloaded, reused)."""
    manifest = staging.manifest
    chunks = [c for _, _, c in manifest.iter_chunks()]
    copies = catalog.copies(c.digest for c in chunks) if catalog is not None else {}
    if not staging.belongs_here():  # nothing to resume: preflight before creating files
        here = sum(c.length for c in chunks if c.digest in copies)  # hoped for, checked below
        check_free_space(staging.dest, manifest.total_bytes - here)
    done = await trio.to_thread.run_sync(staging.open)
    if copies and len(done) < len(chunks):
        async with trio.open_nursery() as nursery:  # flushing starts the disk early
            nursery.start_soon(_flusher, staging)
            local = await trio.to_thread.run_sync(reuse_local, staging, copies)
            nursery.cancel_scope.cancel()
        log.info(
            "reused name=%s version=%d bytes=%d (chunks already on this node)",
            manifest.name,
            manifest.version,
            local,
        )
    sizes = [c.length for c in chunks]
    reused = sum(sizes[i] for i in staging.done)
    check_free_space(staging.dest, manifest.total_bytes - reused)
    progress.start(f"{manifest.name}@{manifest.version}", manifest.total_bytes, reused)
    downloaded = 0

    def on_chunk(n: int) -> None:
        nonlocal downloaded
        downloaded += n
        progress.advance(n)

    if len(staging.done) < len(sizes):
        async with trio.open_nursery() as nursery:  # more streams to each source
            for src in sources:
                for _ in range(streams - 1):
                    nursery.start_soon(_open_extra, src)
        swarm = Swarm(staging, sources, on_chunk, throttles, streams, joiners)
        if partials is not None:  # serve what we verify to other pullers meanwhile
            partials.add(staging, staging.envelope, swarm.sched.requested)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_flusher, staging)
                await swarm.run()
                nursery.cancel_scope.cancel()
        finally:
            if partials is not None:
                partials.remove(manifest.root)
    if not staging.complete:
        raise TransferError("transfer ended before every chunk arrived")
    return downloaded, reused


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
) -> PullResult:
    """Pull ``name`` (newest, or ``@version``) from every one of ``conns``
    that offers the newest version (a swarm pull). Takes ownership of the
    connections: all are closed on return."""
    started = time.monotonic()
    offer = await choose_source(home, conns, name, version)
    return await pull_offer(
        home,
        offer,
        dest,
        streams,
        progress,
        throttles=throttles,
        partials=partials,
        started=started,
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
    started: float | None = None,
) -> PullResult:
    """Pull the version ``offer`` chose from its sources.

    ``throttles`` cap the download rate (per pull, per daemon); with
    ``partials``, chunks verified so far are served to other pullers while
    this pull runs; ``hints`` are peers (a push's other targets) dialled
    once the pull starts and used as sources as soon as they hold chunks.
    Takes ownership of the offer's connections: all are closed on return.
    """
    started = time.monotonic() if started is None else started
    manifest, envelope, sources = offer.manifest, offer.envelope, offer.sources
    replace = False
    try:
        dest = (dest or default_dest(manifest)).expanduser().absolute()
        if dest.exists() or dest.is_symlink():
            # Only a byte-for-byte match counts as "already there".
            differs = await trio.to_thread.run_sync(compare, dest, manifest)
            if differs and _replaceable(home, dest, manifest, differs.extra):
                replace = True  # our own pulled copy of this name: updated in place
            elif differs:
                raise DestinationExists(
                    f"{dest} already exists and is not {manifest.name}@{manifest.version}"
                    f" ({differs.summary()}); remove it or choose another -o"
                )
            else:
                log.info(
                    'already present name=%s version=%d path="%s" (verified)',
                    manifest.name,
                    manifest.version,
                    dest,
                )
                leftover = Staging(dest, manifest, envelope)
                if leftover.belongs_here():  # a crash between rename and cleanup
                    leftover.discard()
                if any(e.root != manifest.root for e in home.catalog.at_location(dest)):
                    home.catalog.forget_location(dest)  # a crash right after a swap
                home.catalog.add(manifest, envelope, dest, "pulled")
                return pull_result(manifest, dest, 0, manifest.total_bytes, sources, started)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest, manifest, envelope)
        joiners = [partial(_dial_hint, home, peer, addr, streams) for peer, addr in hints]
        try:
            downloaded, reused = await _transfer(
                staging,
                sources,
                streams,
                progress or NoProgress(),
                throttles or [],
                partials,
                joiners,
                home.catalog,
            )
            transferred = time.monotonic()
            await trio.to_thread.run_sync(staging.commit, replace)
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
        if replace:  # the old version's bytes are gone from DEST now
            home.catalog.forget_location(dest)
        home.catalog.add(manifest, envelope, dest, "pulled")
        result = pull_result(manifest, dest, downloaded, reused, sources, started)
        for bad in (s for s in sources if s.problem):
            log.warning(
                'source dropped name=%s version=%d peer=%s status=%s error="%s"',
                manifest.name,
                manifest.version,
                bad.peer.short,
                "bad" if bad.bad else "lost",
                bad.problem,
            )
        return result
    finally:
        await offer.aclose()


def _replaceable(home: Home, dest: Path, manifest: Manifest, extra: list[str]) -> bool:
    """Whether ``dest`` is a copy we pulled of another version of this name
    from this publisher, not a link, holding no file of anyone else's (so a
    pull may update it in place without losing anything but that version)."""
    rows = [] if dest.is_symlink() else home.catalog.at_location(dest)
    for e in rows:
        if (
            e.origin == "pulled"
            and e.name == manifest.name
            and e.publisher == manifest.publisher.key
            and e.version != manifest.version  # a damaged copy of this one is reported
        ):
            old = e.manifest()
            ours = {f.path for f in old.files}
            return old.kind == manifest.kind and all(path in ours for path in extra)
    return False


async def _dial_hint(
    home: Home, peer: PeerId, addr: tuple[str, int], streams: int
) -> Source | None:
    """Connect to a hinted peer; None (logged) if it cannot be reached."""
    try:
        conn = await connect_direct(home, addr, expect=peer)
    except NETWORK_ERRORS as exc:  # a hint that fails never fails the pull
        log.info('hinted peer unreachable peer=%s error="%s"', peer.short, exc)
        return None
    src = Source(peer, [conn], conn.route, conn.label)
    try:
        for _ in range(streams - 1):
            await _open_extra(src)
    except BaseException:  # cancelled (the pull finished): close what we opened
        for c in src.conns:
            await c.aclose()
        raise
    return src


async def _flusher(staging: Staging) -> None:
    """Flush written chunks and the journal periodically, off the write path."""
    while True:
        await trio.sleep(FSYNC_INTERVAL)
        await trio.to_thread.run_sync(staging.sync)


async def _open_extra(src: Source) -> None:
    """Open one more stream to a source, the same way; a failure just means
    fewer streams."""
    first = src.conns[0]
    try:
        conn = await first.redial()
    except NETWORK_ERRORS as exc:
        log.info('extra stream failed peer=%s error="%s"', first.label, exc)
        return
    src.conns.append(conn)


async def list_remote(conn: PeerConnection) -> list[m.VersionInfo]:
    """What one peer offers."""
    reply = await conn.request(m.ListRequest())
    if not isinstance(reply, m.ListResponse):
        raise RemoteProtocolError("expected a version list")
    return list(reply.versions)
