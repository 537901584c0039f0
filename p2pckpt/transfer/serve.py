"""The seeder: answer trusted peers' requests from the catalog's own files.

Per connection (one nursery)::

    handshake (≤ HANDSHAKE_TIMEOUT, at most MAX_HANDSHAKES at once)
    trust check: the peer needs the "pull" role, else one Error and close
    reader   : decrypt, parse, queue requests (more than MAX_OUTSTANDING
               queued = protocol violation, connection closed)
    preparer : for each request, read + re-hash the chunk in a worker thread
               (a file changed after publishing is caught here, R-31)
    sender   : encrypt and send prepared responses, in order

Limits (R-50): concurrent handshakes, connections, outstanding requests,
idle time. Any error ends that one connection and is logged; the listener
keeps serving.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream, open_secure
from p2pckpt.errors import (
    ConfigError,
    ManifestError,
    NotAuthorized,
    P2pckptError,
    RemoteProtocolError,
    TrustError,
)
from p2pckpt.home import Home
from p2pckpt.identity.trust import TRUST_FILE, TrustStore
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest, validate_name
from p2pckpt.manifest.paths import safe_display
from p2pckpt.transfer.ratelimit import RateLimiter
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import (
    CHUNK_HEADER_SIZE,
    SERVER_ACCEPTS,
    MessageReader,
    chunk_header,
    encode,
)

log = logging.getLogger("p2pckpt.serve")

MAX_HANDSHAKES: Final = 32
MAX_CONNECTIONS: Final = 256
IDLE_TIMEOUT: Final = 300.0
PREPARED_QUEUE: Final = 2
BUFFERS_PER_CONNECTION: Final = 3
REQUEST_WINDOW: Final = 64 * 1024
MAX_VERSIONS_PER_CONNECTION: Final = 8


@dataclass
class _Served:
    """A version being served on one connection: its chunks and file paths."""

    manifest: Manifest
    location: Path
    chunks: list[tuple[str, Chunk]] = field(default_factory=list)

    @classmethod
    def load(cls, manifest: Manifest, location: Path) -> _Served:
        return cls(manifest, location, [(f.path, c) for _, f, c in manifest.iter_chunks()])

    def file_path(self, relpath: str) -> Path:
        return self.location if self.manifest.kind == "file" else self.location / relpath


_Prepared = tuple[bytes | memoryview, bytearray]


class _SourceChanged(Exception):
    pass


def _read_chunk(path: Path, chunk: Chunk, req_id: int, buf: bytearray) -> memoryview:
    """Read one chunk from the original file into ``buf`` and check its hash
    (worker thread). Returns the framed message: header and chunk bytes."""
    size = CHUNK_HEADER_SIZE + chunk.length
    if len(buf) < size:
        buf.extend(bytes(size - len(buf)))
    buf[:CHUNK_HEADER_SIZE] = chunk_header(req_id, chunk.length)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise _SourceChanged(f"cannot open {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _SourceChanged(f"{path} is no longer a regular file")
        body = memoryview(buf)[CHUNK_HEADER_SIZE:size]
        got = os.preadv(fd, [body], chunk.offset)
    finally:
        os.close(fd)
    if got != chunk.length or chunk_hash(body) != chunk.digest:
        raise _SourceChanged(f"{path} changed after it was published")
    return memoryview(buf)[:size]


class Server:
    """Serves one home's catalog to trusted peers."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._handshakes = trio.CapacityLimiter(MAX_HANDSHAKES)
        self._connections = 0
        self._per_source = RateLimiter()
        self._log_limit = RateLimiter(rate=1 / 60, burst=3)
        self._trust_stamp = self._trust_file_stamp()

    def _trust_file_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.home.path / TRUST_FILE).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _current_trust(self) -> TrustStore:
        """The trust store, re-read when ``trust add/rm`` changed it on disk,
        so a running server honours edits without a restart."""
        stamp = self._trust_file_stamp()
        if stamp != self._trust_stamp:
            try:
                self.home.trust = TrustStore.load(self.home.path)
                self._trust_stamp = stamp
                log.info("trust store reloaded")
            except ConfigError as exc:
                log.error("trust store not reloaded, keeping the old one: %s", exc)
        return self.home.trust

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
    ) -> None:
        """Listen and serve until cancelled; reports the listeners when ready."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                + (" (is another serve running?)" if exc.errno == errno.EADDRINUSE else "")
            ) from None
        task_status.started(listeners)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, transport: trio.SocketStream) -> None:
        """One connection; never raises (errors end only this connection)."""
        try:
            host, port = transport.socket.getpeername()[:2]
            addr = f"{host}:{port}"
        except OSError:
            addr = "?"
        source = addr.rpartition(":")[0]
        now = trio.current_time()
        if self._connections >= MAX_CONNECTIONS or not self._per_source.allow(source, now):
            if self._log_limit.allow(source, now):
                log.warning(
                    "dropping connections from %s (rate or connection limit; logged at most"
                    " once a minute)",
                    source,
                )
            await transport.aclose()
            return
        self._connections += 1
        try:
            await self._handle(transport, addr)
        except* P2pckptError as group:
            log.info("connection from %s ended: %s", addr, _first(group))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.info("connection from %s lost: %s", addr, _first(group))
        except* trio.TooSlowError:
            log.info("connection from %s idle for %ds; closed", addr, IDLE_TIMEOUT)
        finally:
            self._connections -= 1
            with trio.CancelScope(shield=True):
                await transport.aclose()

    async def _handle(self, transport: trio.SocketStream, addr: str) -> None:
        async with self._handshakes:
            # Requests are small: a small receive window keeps memory per
            # connection down to the chunk buffers.
            secure = await open_secure(
                transport, self.home.key, initiator=False, receive_window=REQUEST_WINDOW
            )
        try:
            self._current_trust().require(secure.peer, "pull")
        except TrustError as exc:
            if self._log_limit.allow(addr.rpartition(":")[0], trio.current_time()):
                log.warning("refused %s from %s: %s", secure.peer.short, addr, exc)
            known = isinstance(exc, NotAuthorized)
            reason = (
                "we trust you, but not with the 'pull' role"
                if known
                else "we do not trust you (ask our owner to 'trust add' your ID)"
            )
            await secure.send_all(encode(m.Error(m.UNAUTHORIZED, reason)))
            return
        log.info("peer %s connected from %s", secure.peer.short, addr)
        requests_send, requests_recv = trio.open_memory_channel[m.Request](m.MAX_OUTSTANDING)
        prepared_send, prepared_recv = trio.open_memory_channel[_Prepared](PREPARED_QUEUE)
        # Chunk buffers circulate preparer -> sender -> pool, so a connection
        # holds at most BUFFERS_PER_CONNECTION chunks in memory.
        pool_send, pool_recv = trio.open_memory_channel[bytearray](BUFFERS_PER_CONNECTION)
        for _ in range(BUFFERS_PER_CONNECTION):
            pool_send.send_nowait(bytearray())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender, secure, prepared_recv, pool_send)
            nursery.start_soon(self._preparer, requests_recv, prepared_send, pool_recv)
            await self._reader(secure, requests_send)
            nursery.cancel_scope.cancel()

    async def _reader(
        self, secure: SecureStream, requests: trio.MemorySendChannel[m.Request]
    ) -> None:
        reader = MessageReader(SERVER_ACCEPTS)
        async with requests:
            while True:
                with trio.fail_after(IDLE_TIMEOUT):
                    data = await secure.receive_some()
                if not data:
                    return  # the peer is done; nobody is left to answer
                for msg in reader.feed(data):
                    try:
                        requests.send_nowait(msg)  # type: ignore[arg-type]
                    except trio.WouldBlock:
                        await secure.send_all(
                            encode(m.Error(m.TOO_MANY_REQUESTS, "too many outstanding requests"))
                        )
                        raise RemoteProtocolError(
                            "peer exceeded the outstanding-request limit"
                        ) from None

    async def _preparer(
        self,
        requests: trio.MemoryReceiveChannel[m.Request],
        prepared: trio.MemorySendChannel[_Prepared],
        pool: trio.MemoryReceiveChannel[bytearray],
    ) -> None:
        served: dict[bytes, _Served] = {}
        async with prepared:
            async for req in requests:
                buf = await pool.receive()
                try:
                    payload = await self._respond(req, served, buf)
                except BaseException:
                    await prepared.send((b"", buf))
                    raise
                await prepared.send((payload, buf))

    async def _respond(
        self, req: m.Request, served: dict[bytes, _Served], buf: bytearray
    ) -> bytes | memoryview:
        catalog = self.home.catalog
        match req:
            case m.ListRequest():
                entries = catalog.all()[-m.MAX_LIST_ENTRIES :]
                return encode(
                    m.ListResponse(
                        tuple(
                            m.VersionInfo(
                                e.name, e.version, e.publisher, e.root, e.total_bytes, e.file_count
                            )
                            for e in entries
                        )
                    )
                )
            case m.ManifestRequest(name, version):
                try:
                    validate_name(name)
                except ManifestError:
                    return encode(m.Error(m.BAD_REQUEST, "bad checkpoint name"))
                entry = catalog.find(name, version)
                if entry is None:
                    what = name if version is None else f"{name}@{version}"
                    return encode(m.Error(m.NOT_FOUND, f"no checkpoint {what}"))
                return encode(m.ManifestResponse(entry.envelope))
            case m.ChunkRequest(req_id, root, index):
                held = served.get(root)
                if held is None:
                    entry = catalog.by_root(root)
                    if entry is None:
                        return encode(m.Error(m.NOT_FOUND, "unknown version", req_id))
                    held = _Served.load(entry.manifest(), Path(entry.location))
                    if len(served) >= MAX_VERSIONS_PER_CONNECTION:
                        served.pop(next(iter(served)))
                    served[root] = held
                if index >= len(held.chunks):
                    return encode(m.Error(m.BAD_REQUEST, "no such chunk", req_id))
                relpath, chunk = held.chunks[index]
                try:
                    return await trio.to_thread.run_sync(
                        _read_chunk, held.file_path(relpath), chunk, req_id, buf
                    )
                except _SourceChanged as exc:
                    what = f"{held.manifest.name}@{held.manifest.version}"
                    log.error("refusing %s: %s", what, safe_display(str(exc)))
                    return encode(
                        m.Error(
                            m.SOURCE_CHANGED,
                            f"the seeder's copy of {what} changed after publishing",
                            req_id,
                        )
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _sender(
        self,
        secure: SecureStream,
        prepared: trio.MemoryReceiveChannel[_Prepared],
        pool: trio.MemorySendChannel[bytearray],
    ) -> None:
        async for payload, buf in prepared:
            if payload:
                with trio.fail_after(IDLE_TIMEOUT):
                    await secure.send_all(payload)
            if isinstance(payload, memoryview):
                payload.release()
            pool.send_nowait(buf)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group, for a one-line log."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
