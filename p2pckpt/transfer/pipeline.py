"""One authenticated connection's pipeline: reader -> preparer -> sender.

    reader    : decrypt, parse, queue requests (more than MAX_OUTSTANDING
                queued = protocol violation, connection closed)
    preparer  : answer List/Manifest/Have (``answers``) and pushes
                (``push_serve``); for a chunk, lease a buffer (``leases``),
                read + re-hash it in a worker thread (a file changed after
                publishing is caught there, R-31) and pack it there too when
                the connection's ``PackPolicy`` says it pays (``chunk_serve``)
    sender    : encrypt and send prepared responses in order, give the
                buffer back; time how fast the link takes chunks

``Pipeline`` holds what every connection of one server shares; ``converse``
runs one connection until the peer is done or something fails.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import trio

from p2pckpt.channel.stream import SecureStream
from p2pckpt.errors import RemoteProtocolError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.paths import safe_display
from p2pckpt.store.catalog import Catalog
from p2pckpt.transfer import releases
from p2pckpt.transfer.answers import answer
from p2pckpt.transfer.chunk_serve import Busy, Chunks, Packing
from p2pckpt.transfer.leases import BufferBudget, Lease, Share
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.transfer.push_serve import PushHandler, serve_push
from p2pckpt.transfer.throttle import Throttle, send_paced
from p2pckpt.transfer.trust_watch import may
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import SERVER_ACCEPTS, MessageReader, encode
from p2pckpt.wire.features import PROTOCOL, SERVER_FEATURES, agreed, release

log = logging.getLogger("p2pckpt.serve")

IDLE_TIMEOUT: Final = 300.0
SEND_TIMEOUT: Final = 60.0
# A connection whose peer does not take STALL_SLICE bytes within STALL_SECONDS
# (after the kernel's buffers filled) is not reading: dropped, so its buffers
# serve others.
STALL_SECONDS: Final = 5.0
PREPARED_QUEUE: Final = 2
MAX_PROGRESS_WAIT: Final = 30.0  # a long-polled ProgressRequest is answered by then
PROGRESS_TICK: Final = 0.05  # how often a long poll looks at the in-progress book
_NUMBERED = (m.ChunkRequest, m.PiecesRequest, m.RangeRequest)  # requests answered by req_id

_Prepared = tuple[bytes | memoryview, bytearray | None]  # (response, its leased buffer)


class Pipeline:
    """What the connections of one server share (see ``Server`` for the args)."""

    def __init__(
        self,
        home: Home,
        on_push: PushHandler | None,
        partials: Partials | None,
        chunks: Chunks,
        buffers: BufferBudget,
        throttle: Throttle | None,
        on_served: Callable[[int], None] | None,
        *,
        compress: bool,
        catalog: Catalog | None,
        progress: ProgressBook | None = None,
    ) -> None:
        self.home = home
        self._catalog = catalog
        self._progress = progress
        self._on_push = on_push
        self._partials = partials
        self._chunks = chunks
        self._buffers = buffers
        self._throttle = throttle
        self._on_served = on_served
        self._compress = compress
        self.serving: Counter[bytes] = Counter()  # roots open connections read
        self._open: set[Busy] = set()  # the connections being served

    def given(self, root: bytes) -> int:
        """The chunks of ``root`` the peers connected now were given (or asked
        for): out in the swarm, so a seeder's Have says so (``Scheduler.
        update_given``) and its upload goes to what nobody has yet."""
        bits = 0
        for busy in self._open:
            bits |= busy.given.get(root, 0)
        return bits

    async def converse(
        self,
        secure: SecureStream,
        peer: PeerId,
        hint: tuple[str, int] | None,
        share: Share,
        local: bool = False,
    ) -> None:
        """Serve one authenticated connection until the peer is done."""
        requests_send, requests_recv = trio.open_memory_channel[m.Request](m.MAX_OUTSTANDING)
        prepared_send, prepared_recv = trio.open_memory_channel[_Prepared](PREPARED_QUEUE)
        busy = Busy(Packing(local=local, enabled=self._compress))
        lease = Lease(self._buffers, share)
        self._open.add(busy)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, secure, prepared_recv, busy, lease, share)
                nursery.start_soon(
                    self._preparer, requests_recv, prepared_send, peer, hint, busy, lease
                )
                await self._reader(secure, requests_send, busy)
                nursery.cancel_scope.cancel()
        finally:
            self._open.discard(busy)
            lease.close()
            self.serving.subtract(busy.roots)
            self.serving += Counter()  # drop the zero counts
            pack = busy.pack
            if pack.packed:
                log.info(
                    "packed chunks peer=%s chunks=%d packed=%d chunk_bytes=%d wire_bytes=%d",
                    peer.short,
                    pack.chunks,
                    pack.packed,
                    pack.chunk_bytes,
                    pack.wire_bytes,
                )

    async def _reader(
        self, secure: SecureStream, requests: trio.MemorySendChannel[m.Request], busy: Busy
    ) -> None:
        reader = MessageReader(SERVER_ACCEPTS)
        async with requests:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    data = await secure.receive_some()
                if idle.cancelled_caught:
                    if busy.working:  # a long push is running for this peer: not idle
                        continue
                    raise trio.TooSlowError
                if not data:
                    return  # the peer is done; nobody is left to answer
                for msg in reader.feed(data):
                    if isinstance(msg, m.Cancel):
                        busy.cancel(msg.req_id)
                        continue
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
        peer: PeerId,
        hint: tuple[str, int] | None,
        busy: Busy,
        lease: Lease,
    ) -> None:
        async def send(data: bytes) -> None:
            await prepared.send((data, None))

        async with prepared:
            async for req in requests:
                if isinstance(req, m.Hello):  # a 0.2.0+ client: say what we speak
                    busy.features = agreed(req.features)
                    busy.spoke = True
                    releases.note(peer, safe_display(req.release), req.protocol, busy.features)
                    await send(encode(m.Hello(PROTOCOL, release(), SERVER_FEATURES)))
                    continue
                if not busy.spoke:  # its first request, and no Hello: a 0.1.0 client
                    busy.spoke = True
                    releases.note_legacy(peer)
                if isinstance(req, m.Unknown):  # a newer client's: answered, not fatal
                    text = f"message type {req.kind} is not known to release {release()}"
                    await send(encode(m.Error(m.UNSUPPORTED, text)))
                    continue
                if isinstance(req, m.PushRequest):
                    busy.working = True
                    try:
                        await serve_push(self.home, self._on_push, peer, hint, req, send)
                    finally:
                        busy.working = False
                    continue
                if not may(self.home, peer, "pull"):
                    error = m.Error(
                        m.UNAUTHORIZED,
                        "we trust you, but not with the 'pull' role",
                        req.req_id if isinstance(req, _NUMBERED) else None,
                    )
                    await send(encode(error))
                    continue
                if isinstance(req, m.PiecesRequest | m.RangeRequest):
                    if req.req_id in busy.cancelled:
                        del busy.cancelled[req.req_id]
                        continue
                    await self._reading(busy, req.root)
                    # A range answer is chunk bytes: sent (and capped) like a chunk.
                    await prepared.send((await self._chunks.pieces_or_ranges(req), None))
                    continue
                if isinstance(req, m.ProgressRequest) and req.after is not None:
                    await self._progress_changed(req.name, req.after)
                if not isinstance(req, m.ChunkRequest):
                    reply = answer(
                        req,
                        self._catalog,
                        self._partials,
                        self.given,
                        self._progress,
                        busy.features,
                    )
                    await send(encode(reply))
                    continue
                if busy.cancelled and req.req_id in busy.cancelled:
                    del busy.cancelled[req.req_id]
                    continue
                buf = await lease.acquire()
                try:
                    await self._reading(busy, req.root)
                    payload = await self._chunks.prepare(req, buf, busy.pack)
                except BaseException:
                    lease.release(None)  # the buffer may still be in use
                    raise
                if isinstance(payload, memoryview):  # a chunk (index checked), not an Error
                    busy.given[req.root] = busy.given.get(req.root, 0) | 1 << req.index
                # An Error, or a chunk packed into a frame of its own: the buffer is free.
                if isinstance(payload, bytes) or payload.obj is not buf:
                    lease.release(buf)
                    await prepared.send((payload, None))
                else:
                    await prepared.send((payload, buf))

    async def _progress_changed(self, name: str, after: int) -> None:
        """A long poll (issue 21): return once the in-progress sequence offered
        for ``name`` (0: none) is not ``after``, or after MAX_PROGRESS_WAIT.
        Looks at the book every PROGRESS_TICK: a comparison, no I/O. A server
        with no book (``serve``) never offers any: it waits the whole time."""
        book = self._progress
        with trio.move_on_after(MAX_PROGRESS_WAIT):
            while True:
                offered = book.find(name) if book is not None else None
                sequence = offered.manifest.in_progress if offered is not None else None
                if (sequence or 0) != after:
                    return
                await trio.sleep(PROGRESS_TICK)

    async def _reading(self, busy: Busy, root: bytes) -> None:
        """The connection reads ``root``: retention spares it while it is open.
        Only a version served here counts: a peer naming random roots must not
        grow the sets."""
        if root not in busy.roots and await self._chunks.served(root) is not None:
            busy.roots.add(root)
            self.serving[root] += 1

    async def _sender(
        self,
        secure: SecureStream,
        prepared: trio.MemoryReceiveChannel[_Prepared],
        busy: Busy,
        lease: Lease,
        share: Share,
    ) -> None:
        """Chunk responses are memoryviews (of a pooled buffer, or of a packed
        frame); the rest bytes. A chunk whose send ends with the next response
        already waiting was paced by the link: it times the link for the
        connection's pack policy."""
        pack = busy.pack
        throttles = [t for t in (share.throttle, self._throttle) if t is not None]

        async def send(part: memoryview) -> None:
            await secure.send_all(part, stall=STALL_SECONDS)

        async for payload, buf in prepared:
            started = time.perf_counter()
            throttled = 0.0
            try:
                if isinstance(payload, memoryview):
                    throttled = await send_paced(send, payload, throttles, SEND_TIMEOUT)
                else:
                    with trio.fail_after(SEND_TIMEOUT):  # bounds even a trickling reader
                        await secure.send_all(payload, stall=STALL_SECONDS)
            except BaseException:
                if buf is not None:
                    lease.release(None)
                raise
            if isinstance(payload, memoryview):
                if pack.policy is not None and prepared.statistics().current_buffer_used:
                    pack.policy.sent(len(payload), time.perf_counter() - started, throttled)
                if self._on_served is not None:
                    self._on_served(len(payload))
                payload.release()
            if buf is not None:
                lease.release(buf)
