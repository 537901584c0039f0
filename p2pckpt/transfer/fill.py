"""Filling a version's staging copy: chunks already on this node, then the swarm.

``fill`` first copies every chunk some catalogued version here already holds
(``reuse``; free space is checked before any file is created), then
assembles chunks an older copy holds most of from its pieces and the byte
ranges it lacks (``delta``), then fetches the rest from the sources
(``swarm``), more streams to each, peers named as
hints joining as they are dialled (``dial_hint``), and peers a plain pull
finds on the LAN (``discovered``) likewise. Written chunks and the
journal are flushed every FSYNC_INTERVAL, off the write path. Meanwhile the
verified part is served to other pullers through ``partials``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

import trio

from p2pckpt.errors import TransferError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.store.catalog import Catalog
from p2pckpt.store.space import check_free_space
from p2pckpt.store.staging import FSYNC_INTERVAL, Staging
from p2pckpt.transfer.delta import fill_pieces
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.reuse import reuse_local
from p2pckpt.transfer.swarm import NETWORK_ERRORS, Discover, Joiner, Source, Swarm
from p2pckpt.transfer.throttle import Throttle

log = logging.getLogger("p2pckpt.pull")

Hint = tuple[PeerId, tuple[str, int]]  # a peer that may join mid-pull, and where
# Runs for the whole pull, calling back with each peer found meanwhile (a plain
# pull's fellow pullers on the LAN: ``discovery.sharing``).
Found = Callable[[Callable[[Hint], None]], Awaitable[None]]


class Progress(Protocol):
    """Callbacks for a progress display."""

    def start(self, name: str, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


async def fill(
    staging: Staging,
    sources: list[Source],
    streams: int,
    progress: Progress,
    throttles: list[Throttle],
    partials: Partials | None,
    joiners: Sequence[Joiner] = (),
    catalog: Catalog | None = None,
    discover: Discover | None = None,
    unreached: Sequence[str] = (),
) -> tuple[int, int]:
    """Fetch every chunk the partial copy lacks, from local copies first
    (``catalog``), then from the swarm; returns (downloaded, reused).
    ``unreached``: peers tried before the pull and not reached (``Swarm``)."""
    manifest = staging.manifest
    # only the chunks of the files selected (issue 19; all of them by default)
    chunks = [c for i, _, c in manifest.iter_chunks() if i in staging.wanted]
    total = staging.wanted_bytes
    copies = catalog.copies(c.digest for c in chunks) if catalog is not None else {}
    if not staging.belongs_here():  # nothing to resume: preflight before creating files
        here = sum(c.length for c in chunks if c.digest in copies)  # hoped for, checked below
        check_free_space(staging.dest, total - here)
    done = await trio.to_thread.run_sync(staging.open)
    # A partial copy of another version this pull started over from (issue 18).
    for digest, where in (await trio.to_thread.run_sync(staging.previous_chunks)).items():
        copies.setdefault(digest, []).extend(where)
    if copies and len(done) < len(chunks):  # done is of the wanted chunks only
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
    sizes = [c.length for _, _, c in manifest.iter_chunks()]
    reused = sum(sizes[i] for i in staging.done)
    check_free_space(staging.dest, total - reused)
    progress.start(f"{manifest.name}@{manifest.version}", total, reused)
    downloaded = 0

    def on_chunk(n: int) -> None:
        nonlocal downloaded
        downloaded += n
        progress.advance(n)

    if not staging.complete and sources and (copies or catalog is not None):
        # Chunks an older copy holds most of: only the bytes it lacks (issue 18).
        pieces = await fill_pieces(staging, sources, copies, catalog, progress.advance)
        downloaded += pieces.fetched
        reused += pieces.local
    await trio.to_thread.run_sync(staging.drop_previous)  # its chunks are taken
    if not staging.complete:
        async with trio.open_nursery() as nursery:  # more streams to each source
            for src in sources:
                for _ in range(streams - 1):
                    nursery.start_soon(_open_extra, src)
        swarm = Swarm(staging, sources, on_chunk, throttles, streams, joiners, discover, unreached)
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


async def dial_hint(home: Home, peer: PeerId, addr: tuple[str, int], streams: int) -> Source | None:
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


def discovered(found: Found, home: Home, streams: int) -> Discover:
    """The peers ``found`` reports, as joiners a swarm dials (unless the peer
    is a source already)."""

    async def discover(offer: Callable[[PeerId, Joiner], None]) -> None:
        await found(lambda hint: offer(hint[0], partial(dial_hint, home, *hint, streams)))

    return discover


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
