"""The puller: fetch one signed version into DEST over N parallel streams.

Order of trust (SECURITY.md §1.1): the transport peer must be in our trust
store; the manifest must carry a valid signature of a publisher we trust for
"publish", name what we asked for, and not roll "latest" back; every chunk
must hash to its manifest entry before it is written.

Each stream is one connection with its own Noise session. A stream keeps up
to PIPELINE requests in flight, takes the next missing chunk from a shared
iterator (so fast streams do more), and hands verified-pending chunks to its
writer task, which hashes and writes in a worker thread while the stream
keeps receiving. Any failure cancels the pull; the journal makes the next
run continue where this one stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from p2pckpt.manifest.manifest import Manifest, verify
from p2pckpt.store.staging import FSYNC_INTERVAL, Staging, check_free_space
from p2pckpt.store.verify import compare
from p2pckpt.transfer.peer import PeerConnection, remote_error
from p2pckpt.wire import messages as m

log = logging.getLogger("p2pckpt.pull")

PIPELINE: Final = 6
WRITE_QUEUE: Final = 3
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
    chunks: int
    streams: int
    seconds: float
    peers: list[dict[str, str]]


class Progress(Protocol):
    """Callbacks for a progress display."""

    def start(self, name: str, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


class NoProgress:
    def start(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


def default_dest(manifest: Manifest) -> Path:
    if manifest.kind == "file":
        return Path.cwd() / manifest.files[0].path
    return Path.cwd() / manifest.name


async def _stream_worker(
    conn: PeerConnection,
    staging: Staging,
    todo: Iterator[int],
    sizes: list[int],
    on_chunk: Callable[[int], None],
) -> None:
    inflight: set[int] = set()
    write_send, write_recv = trio.open_memory_channel[tuple[int, bytearray]](WRITE_QUEUE)
    root = staging.manifest.root

    async def writer() -> None:
        async for index, data in write_recv:
            await trio.to_thread.run_sync(staging.write_chunk, index, data)
            conn.buffers.put(data)
            on_chunk(sizes[index])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async with write_send:
            while True:
                while len(inflight) < PIPELINE:
                    index = next(todo, None)
                    if index is None:
                        break
                    inflight.add(index)
                    await conn.send(m.ChunkRequest(index, root, index))
                if not inflight:
                    break
                msg = await conn.receive()
                if isinstance(msg, m.ChunkData) and msg.req_id in inflight:
                    inflight.discard(msg.req_id)
                    assert isinstance(msg.data, bytearray)
                    await write_send.send((msg.req_id, msg.data))
                elif isinstance(msg, m.Error) and msg.req_id in inflight:
                    raise remote_error(msg, conn.label)
                else:
                    raise RemoteProtocolError(f"peer {conn.label} sent an unrequested response")


async def choose_source(
    home: Home, conns: list[PeerConnection], name: str, version: int | None
) -> tuple[PeerConnection, Manifest, bytes]:
    """Ask every connected peer for ``name``; keep the newest version signed by
    a publisher we trust (the first peer wins a tie). Peers that fail or do
    not have it are skipped; if none qualifies, the most telling error is raised."""
    offers: list[tuple[PeerConnection, Manifest, bytes]] = []
    errors: list[P2pckptError] = []

    async def ask(conn: PeerConnection) -> None:
        try:
            offers.append((conn, *await fetch_manifest(home, conn, name, version)))
        except P2pckptError as exc:
            log.info('peer skipped peer=%s error="%s"', conn.label, exc)
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(ask, conn)
    if not offers:
        # A refusal that says something (signature, rollback, trust) beats "not found".
        errors.sort(key=lambda e: isinstance(e, NotFound))
        raise errors[0] if errors else NotFound(f"no peer offers {name}")
    order = {id(c): i for i, c in enumerate(conns)}
    offers.sort(key=lambda o: (-o[1].version, order[id(o[0])]))
    return offers[0]


def _result(
    manifest: Manifest,
    dest: Path,
    downloaded: int,
    reused: int,
    conns: list[PeerConnection],
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
        chunks=manifest.chunk_count,
        streams=len(conns),
        seconds=time.monotonic() - started,
        peers=list(
            {
                (c.peer, c.route): {"id": str(c.peer), "route": c.route, "via": c.label}
                for c in conns
            }.values()
        ),
    )


async def _transfer(
    home: Home,
    staging: Staging,
    conns: list[PeerConnection],
    streams: int,
    progress: Progress,
) -> tuple[int, int]:
    """Fetch every chunk the partial copy lacks; returns (downloaded, reused)."""
    manifest = staging.manifest
    sizes = [c.length for _, _, c in manifest.iter_chunks()]
    if not staging.belongs_here():  # nothing to resume: preflight before creating files
        check_free_space(staging.dest, manifest.total_bytes)
    done = await trio.to_thread.run_sync(staging.open)
    reused = sum(sizes[i] for i in done)
    check_free_space(staging.dest, manifest.total_bytes - reused)
    progress.start(f"{manifest.name}@{manifest.version}", manifest.total_bytes, reused)
    missing = [i for i in range(len(sizes)) if i not in done]
    downloaded = 0

    def on_chunk(n: int) -> None:
        nonlocal downloaded
        downloaded += n
        progress.advance(n)

    if missing:
        async with trio.open_nursery() as nursery:
            for _ in range(min(streams, len(missing)) - 1):
                nursery.start_soon(_open_extra, conns[0], conns)
        todo = iter(missing)  # shared: a faster stream simply takes more
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_flusher, staging)
            async with trio.open_nursery() as workers:
                for c in conns:
                    workers.start_soon(_stream_worker, c, staging, todo, sizes, on_chunk)
            nursery.cancel_scope.cancel()
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
) -> PullResult:
    """Pull ``name`` (newest, or ``@version``) from the best of ``conns``.

    Takes ownership of the connections: all are closed on return.
    """
    started = time.monotonic()
    used: list[PeerConnection] = []
    try:
        conn, manifest, envelope = await choose_source(home, conns, name, version)
        used = [conn]
        for other in conns:
            if other is not conn:
                await other.aclose()
        dest = (dest or default_dest(manifest)).expanduser().absolute()
        if dest.exists() or dest.is_symlink():
            # Only a byte-for-byte match counts as "already there".
            differs = await trio.to_thread.run_sync(compare, dest, manifest)
            if differs:
                raise DestinationExists(
                    f"{dest} already exists and is not {manifest.name}@{manifest.version}"
                    f" ({differs.summary()}); remove it or choose another -o"
                )
            log.info(
                'already present name=%s version=%d path="%s" (verified)',
                manifest.name,
                manifest.version,
                dest,
            )
            leftover = Staging(dest, manifest, envelope)
            if leftover.belongs_here():  # a crash between rename and cleanup
                leftover.discard()
            home.catalog.add(manifest, envelope, dest, "pulled")
            return _result(manifest, dest, 0, manifest.total_bytes, used, started)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest, manifest, envelope)
        try:
            downloaded, reused = await _transfer(
                home, staging, used, streams, progress or NoProgress()
            )
            transferred = time.monotonic()
            await trio.to_thread.run_sync(staging.commit)
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
        home.catalog.add(manifest, envelope, dest, "pulled")
        return _result(manifest, dest, downloaded, reused, used, started)
    finally:
        for c in conns + used[1:]:
            await c.aclose()


async def _flusher(staging: Staging) -> None:
    """Flush written chunks and the journal periodically, off the write path."""
    while True:
        await trio.sleep(FSYNC_INTERVAL)
        await trio.to_thread.run_sync(staging.sync)


async def _open_extra(first: PeerConnection, conns: list[PeerConnection]) -> None:
    """Open one more stream to the same peer, the same way; a failure just
    means fewer streams."""
    try:
        conn = await first.redial()
    except P2pckptError as exc:
        log.info('extra stream failed peer=%s error="%s"', first.label, exc)
        return
    conns.append(conn)


async def list_remote(conn: PeerConnection) -> list[m.VersionInfo]:
    """What one peer offers."""
    reply = await conn.request(m.ListRequest())
    if not isinstance(reply, m.ListResponse):
        raise RemoteProtocolError("expected a version list")
    return list(reply.versions)
