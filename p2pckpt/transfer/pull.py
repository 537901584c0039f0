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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import (
    BadSignature,
    ChannelClosed,
    ConfigError,
    DestinationExists,
    HandshakeFailed,
    ManifestError,
    NotAuthorized,
    NotFound,
    P2pckptError,
    PeerUnreachable,
    RemoteError,
    RemoteProtocolError,
    SourceChanged,
    TransferError,
)
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest, verify
from p2pckpt.manifest.paths import safe_display
from p2pckpt.store.staging import FSYNC_INTERVAL, Staging, check_free_space
from p2pckpt.store.verify import compare
from p2pckpt.transfer.buffers import BufferPool
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import CLIENT_ACCEPTS, MessageReader, encode

log = logging.getLogger("p2pckpt.pull")

CONNECT_TIMEOUT: Final = 10.0
IDLE_TIMEOUT: Final = 60.0
PIPELINE: Final = 6
WRITE_QUEUE: Final = 3
DEFAULT_STREAMS: Final = 2

Addr = tuple[str, int]


def parse_addr(text: str, allow_zero: bool = False) -> Addr:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``); port 0 only for listening."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    low = 0 if allow_zero else 1
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad address {text!r}: use HOST:PORT")
    if not low <= int(port) < 65536:
        raise ConfigError(f"bad address {text!r}: the port must be {low}..65535")
    return host, int(port)


def _remote_error(err: m.Error, peer: str) -> P2pckptError:
    text = safe_display(err.message)  # peer-controlled: never raw to a terminal
    if err.code == m.UNAUTHORIZED:
        return NotAuthorized(f"peer {peer} refused us: {text}")
    if err.code == m.NOT_FOUND:
        return NotFound(f"peer {peer}: {text}")
    if err.code == m.SOURCE_CHANGED:
        return SourceChanged(f"peer {peer}: {text}")
    return RemoteError(safe_display(err.code), text)


class PeerConnection:
    """Requests and responses over one secure stream (client side)."""

    def __init__(self, secure: SecureStream, label: str) -> None:
        self.secure = secure
        self.label = label
        self.buffers = BufferPool()
        self._reader = MessageReader(CLIENT_ACCEPTS, self.buffers.get)
        self._pending: deque[m.Message] = deque()

    async def send(self, msg: m.Message) -> None:
        await self.secure.send_all(encode(msg))

    async def receive(self) -> m.Message:
        while not self._pending:
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                ready = await self.secure.receive_messages(self._reader)
            if idle.cancelled_caught:
                raise TransferError(
                    f"peer {self.label} sent nothing for {IDLE_TIMEOUT:.0f}s; the partial copy"
                    " is kept: run the same pull again to resume"
                )
            if not ready:
                raise ChannelClosed(f"peer {self.label} closed the connection")
            self._pending.extend(ready)
        msg = self._pending.popleft()
        if isinstance(msg, m.Error) and msg.req_id is None:
            raise _remote_error(msg, self.label)
        return msg

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.secure.aclose()


async def connect(home: Home, addr: Addr) -> PeerConnection:
    """Dial, handshake, and require the peer to be in our trust store."""
    label = f"{addr[0]}:{addr[1]}"
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(*addr)
    except trio.TooSlowError:
        raise PeerUnreachable(f"cannot reach {label}: timed out") from None
    except OSError as exc:
        # trio reports "all attempts failed" with the real errors in __cause__.
        causes = getattr(exc.__cause__, "exceptions", None) or [exc]
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            reason = "connection refused (is 'p2pckpt serve' running there?)"
        else:
            reason = "; ".join(getattr(c, "strerror", None) or str(c) for c in causes)
        raise PeerUnreachable(f"cannot reach {label}: {reason}") from None
    try:
        try:
            secure = await open_secure(tcp, home.key, initiator=True)
        except HandshakeFailed as exc:
            raise HandshakeFailed(f"{label}: {exc}") from exc
        home.trust.require(secure.peer)
    except BaseException:
        with trio.CancelScope(shield=True):
            await tcp.aclose()
        raise
    return PeerConnection(secure, f"{secure.peer.short}@{label}")


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
                    raise _remote_error(msg, conn.label)
                else:
                    raise RemoteProtocolError(f"peer {conn.label} sent an unrequested response")


async def _connect_any(home: Home, addrs: list[Addr]) -> PeerConnection:
    """The first address that answers and proves a trusted identity."""
    if not addrs:
        raise PeerUnreachable("no peer to pull from: give --from HOST:PORT")
    errors: list[P2pckptError] = []
    for addr in addrs:
        try:
            return await connect(home, addr)
        except (PeerUnreachable, HandshakeFailed, ChannelClosed) as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise PeerUnreachable("; ".join(str(e) for e in errors))


def _result(
    manifest: Manifest, dest: Path, downloaded: int, reused: int, streams: int, started: float
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
        streams=streams,
        seconds=time.monotonic() - started,
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
                nursery.start_soon(_open_extra, home, conns[0], conns)
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
    name: str,
    version: int | None,
    addrs: list[Addr],
    dest: Path | None = None,
    streams: int = DEFAULT_STREAMS,
    progress: Progress | None = None,
) -> PullResult:
    """Pull ``name`` (newest, or ``@version``) from the first reachable address."""
    started = time.monotonic()
    conns = [await _connect_any(home, addrs)]
    try:
        manifest, envelope = await fetch_manifest(home, conns[0], name, version)
        dest = (dest or default_dest(manifest)).expanduser().absolute()
        if dest.exists() or dest.is_symlink():
            # Only a byte-for-byte match counts as "already there".
            differs = await trio.to_thread.run_sync(compare, dest, manifest)
            if differs:
                raise DestinationExists(
                    f"{dest} already exists and is not {manifest.name}@{manifest.version}"
                    f" ({differs.summary()}); remove it or choose another -o"
                )
            log.info("%s already holds %s@%d, verified", dest, manifest.name, manifest.version)
            leftover = Staging(dest, manifest, envelope)
            if leftover.belongs_here():  # a crash between rename and cleanup
                leftover.discard()
            home.catalog.add(manifest, envelope, dest, "pulled")
            return _result(manifest, dest, 0, manifest.total_bytes, 0, started)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest, manifest, envelope)
        try:
            downloaded, reused = await _transfer(
                home, staging, conns, streams, progress or NoProgress()
            )
            transferred = time.monotonic()
            await trio.to_thread.run_sync(staging.commit)
            log.info(
                "%s@%d: transfer %.2fs, commit (fsync + rename) %.2fs",
                manifest.name,
                manifest.version,
                transferred - started,
                time.monotonic() - transferred,
            )
        finally:
            staging.close()
        home.catalog.add(manifest, envelope, dest, "pulled")
        return _result(manifest, dest, downloaded, reused, len(conns), started)
    finally:
        for c in conns:
            await c.aclose()


async def _flusher(staging: Staging) -> None:
    """Flush written chunks and the journal periodically, off the write path."""
    while True:
        await trio.sleep(FSYNC_INTERVAL)
        await trio.to_thread.run_sync(staging.sync)


async def _open_extra(home: Home, first: PeerConnection, conns: list[PeerConnection]) -> None:
    """Open one more stream to the same peer; a failure just means fewer streams."""
    host, port = first.secure.transport.socket.getpeername()[:2]  # type: ignore[attr-defined]
    try:
        conn = await connect(home, (host, port))
    except P2pckptError as exc:
        log.info("extra stream to %s failed: %s", first.label, exc)
        return
    if conn.secure.peer != first.secure.peer:
        await conn.aclose()
        return
    conns.append(conn)


async def list_remote(home: Home, addr: Addr) -> list[m.VersionInfo]:
    conn = await connect(home, addr)
    try:
        await conn.send(m.ListRequest())
        reply = await conn.receive()
        if not isinstance(reply, m.ListResponse):
            raise RemoteProtocolError("expected a version list")
        return list(reply.versions)
    finally:
        await conn.aclose()
