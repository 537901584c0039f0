"""The seeder: answer trusted peers' requests from the catalog's own files.

Per connection (one nursery)::

    admission : per-source rate, then a pre-auth pool (``admission``:
                direct per source and in total, relayed sessions apart);
                a full pool sheds its oldest waiter, a refused client is
                told "busy" (an empty handshake frame) and retries (R-10, R-65)
    handshake : Noise, one HANDSHAKE_TIMEOUT from accept (R-09)
    trust     : the peer must be in the trust store, else one Error and
                close; each request then needs its role (List, Manifest,
                Have and chunks "pull", a push "push"), checked against the
                trust store as it is at that moment; a trust change closes
                the open connections of every peer no longer trusted
                within TRUST_RECHECK (R-63; ``trust_watch``); a version that
                leaves the catalog (unpublish, gc) stops being served within
                CATALOG_RECHECK (``watch_catalog``)
    then the connection's pipeline: reader, preparer, sender (see
    ``pipeline`` for what each does)

Limits (R-50): pre-auth connections per source and in total (and relayed),
authenticated connections per peer and in total, outstanding requests,
chunk buffers for the whole server (memory stays bounded however many peers
pull) and per peer, upload rate per peer, stall, send and idle timeouts. Any
error ends that one connection and is logged; nothing a peer does ends the
server.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT, SecureStream, open_secure
from p2pckpt.config import Config
from p2pckpt.errors import HandshakeFailed, P2pckptError, TrustError, first_leaf
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.net.listen import open_listeners
from p2pckpt.net.ratelimit import RateLimiter, source_key
from p2pckpt.transfer.admission import PreAuth, Ticket
from p2pckpt.transfer.chunk_serve import Chunks, same_host
from p2pckpt.transfer.leases import MAX_CHUNK_BUFFERS, BufferBudget, Share
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.pipeline import Pipeline
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.transfer.push_serve import PushHandler
from p2pckpt.transfer.throttle import Throttle
from p2pckpt.transfer.trust_watch import revoke_stale, watch
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import encode

log = logging.getLogger("p2pckpt.serve")

BUSY: Final = b"\x00\x00"  # an empty handshake frame: "busy, retry shortly"
BUSY_TIMEOUT: Final = 1.0  # a refusal is best effort
MAX_CONNECTIONS: Final = 128
MAX_CONNECTIONS_PER_PEER: Final = 16
REQUEST_WINDOW: Final = 64 * 1024
CATALOG_RECHECK: Final = 0.25  # how often the catalog epoch is looked at for cached versions
RECONNECT_QUIET: Final = 60.0  # a peer back within this long is a poll, not an arrival
MAX_REMEMBERED_PEERS: Final = 4096


class Server:
    """Serves one home's catalog to trusted peers.

    Args:
        home: the node (key, trust store as it is at each decision, catalog).
        on_push: pulls what a pusher asks for; None: this node takes no pushes.
        upload: upload cap for the whole server, bytes/s (0: none).
        compress: pack chunks where it pays (``[transfer] compress``).
        per_peer: upload cap per peer, bytes/s (0: none).
        partials: versions being pulled here, served as they verify (swarm).
        progress: in-progress versions being written here (issue 21).
        on_connect: told (peer, route "direct"/"relay", address or "") for
            each authenticated connection (the daemon's sightings).
        on_served: told the size of each chunk frame sent (metrics).
        on_packed: told (chunk bytes, wire bytes) of each packed chunk (metrics).
        catalog: serve the catalog's versions; False: only ``partials`` (a
            plain pull serving what it verifies, and nothing else of this home).
    """

    def __init__(
        self,
        home: Home,
        on_push: PushHandler | None = None,
        upload: int = 0,
        *,
        compress: bool = True,
        per_peer: int = 0,
        partials: Partials | None = None,
        progress: ProgressBook | None = None,
        on_connect: Callable[[PeerId, str, str], None] | None = None,
        on_served: Callable[[int], None] | None = None,
        on_packed: Callable[[int, int], None] | None = None,
        catalog: bool = True,
    ) -> None:
        self.home = home
        self._on_push = on_push
        self._per_peer = per_peer
        self._on_connect = on_connect
        self._preauth = PreAuth()
        self._shedding: dict[Ticket, trio.CancelScope] = {}
        self._peers: Counter[PeerId] = Counter()
        self._last_left: dict[PeerId, float] = {}  # when each peer's last connection ended
        self._per_source = RateLimiter()
        self._log_limit = RateLimiter(rate=1 / 60, burst=3)
        self._buffers = BufferBudget(MAX_CHUNK_BUFFERS)
        self._shares: dict[PeerId, Share] = {}  # peers with an authenticated connection
        served = home.catalog if catalog else None
        self._chunks = Chunks(served, partials, on_packed, progress)
        self._progress = progress
        self._serves_catalog = catalog
        self._pipeline = Pipeline(
            home,
            on_push,
            partials,
            self._chunks,
            self._buffers,
            Throttle(upload) if upload > 0 else None,
            on_served,
            compress=compress,
            catalog=served,
            progress=progress,
        )

    @classmethod
    def configured(cls, home: Home, cfg: Config, **extra: Any) -> Server:
        """A server with the node's serving settings (upload caps, packing);
        ``extra``: the other arguments, as for the constructor."""
        per_peer = cfg.upload_per_peer
        return cls(
            home, upload=cfg.upload, compress=cfg.compress != "off", per_peer=per_peer, **extra
        )

    # -- trust that may change while serving (``trust_watch``) --------------------

    def revoke_stale(self) -> int:
        """Close every open connection of a peer no longer in the trust store;
        returns how many were closed."""
        return revoke_stale(self.home, self._shares)

    async def watch_trust(self) -> None:
        """Re-check open connections whenever the trust store changes (R-63)."""
        await watch(self.home, self.revoke_stale)

    async def watch_catalog(self) -> None:
        """Stop serving chunks of a version once it leaves the catalog
        (``unpublish``, ``gc``, retention, in any process): the catalog epoch
        changes, and cached chunk tables of versions no longer held are
        dropped within CATALOG_RECHECK. Lists and manifests read the catalog
        at each request already."""
        seen = self.home.catalog.epoch()
        while True:
            await trio.sleep(CATALOG_RECHECK)
            epoch = self.home.catalog.epoch()
            if epoch != seen:
                seen = epoch
                dropped = self._chunks.drop_unheld()
                if self._progress is not None:  # and what was offered of them in progress
                    dropped += self._progress.drop_unheld(self._held_at)
                if dropped:
                    log.info("no longer serving versions=%d (left the catalog)", dropped)

    def _held_at(self, location: Path) -> bool:
        return bool(self.home.catalog.at_location(location))

    # -- listening and connections ---------------------------------------------

    @property
    def connected_peers(self) -> int:
        return len(self._peers)

    def serving(self) -> set[bytes]:
        """Roots of versions some connection is reading now (or has read and
        may read again before it closes): not to be deleted under it."""
        return set(self._pipeline.serving)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
    ) -> None:
        """Listen and serve until cancelled; reports the listeners when ready."""
        listeners = await open_listeners(host, port, "serve")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_trust)
            if self._serves_catalog:
                nursery.start_soon(self.watch_catalog)
            task_status.started(listeners)
            await trio.serve_listeners(self.handle, listeners)

    def _admit(self, source: str, relayed: bool) -> Ticket | None:
        """A pre-auth ticket (shedding the oldest waiter of a full pool), or
        None: over the source's rate or pre-auth cap (see ``admission``)."""
        now = trio.current_time()
        ticket = victim = None
        if relayed or self._per_source.allow(source, now):
            ticket, victim = self._preauth.enter(None if relayed else source, now)
        if victim is not None:
            self._shedding[victim].cancel()
            if self._log_limit.allow("shed", now):
                log.warning(
                    "pre-auth pool full: shedding the oldest waiting connection"
                    " (logged at most once a minute)"
                )
        if ticket is None and self._log_limit.allow(source, now):
            log.warning(
                "dropping connections from=%s (rate or pre-auth limit; logged at most"
                " once a minute)",
                source,
            )
        return ticket

    async def handle(self, transport: trio.abc.Stream, via: str | None = None) -> None:
        """One connection (accepted, or spliced by a relay: ``via``); never
        raises (errors end only this connection)."""
        sock = getattr(transport, "socket", None)
        host, port = via or "?", 0
        if via is None and sock is not None:
            with contextlib.suppress(OSError):
                host, port = sock.getpeername()[:2]
        addr = f"{host}:{port}"
        try:
            source = source_key(host)
            ticket = self._admit(source, relayed=via is not None)
            if ticket is None:
                with trio.move_on_after(BUSY_TIMEOUT):  # so the client retries later
                    await transport.send_all(BUSY)
            else:
                direct = via is None and sock is not None and host != "?"
                local = sock is not None and direct and same_host(sock)
                secure = await self._handshake(transport, ticket)
                if await self._accept_peer(secure, ticket, addr):
                    await self._attend(secure, addr, host if direct else None, local)
        except* P2pckptError as group:
            log.info('connection ended from=%s error="%s"', addr, first_leaf(group))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.info('connection lost from=%s error="%s"', addr, first_leaf(group))
        except* trio.TooSlowError:
            log.info("connection timed out from=%s (closed)", addr)
        except* Exception as group:  # a bug must end one connection, not the server
            log.error('connection failed from=%s error="%r"', addr, first_leaf(group))
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()

    async def _handshake(self, transport: trio.abc.Stream, ticket: Ticket) -> SecureStream:
        """One deadline from accept to an authenticated peer (slowloris, R-09);
        a newcomer to a full pool may shed us first (``admission``)."""
        deadline = trio.CancelScope(deadline=trio.current_time() + HANDSHAKE_TIMEOUT)
        self._shedding[ticket] = deadline
        try:
            with deadline:
                secure = await open_secure(
                    transport, self.home.key, initiator=False, receive_window=REQUEST_WINDOW
                )
            if deadline.cancelled_caught:
                raise HandshakeFailed(
                    "shed: the pre-auth pool was full" if ticket.shed else "handshake timed out"
                )
        finally:
            self._preauth.leave(ticket)
            del self._shedding[ticket]
        return secure

    async def _accept_peer(self, secure: SecureStream, ticket: Ticket, addr: str) -> bool:
        """Whether the authenticated peer is trusted and under the connection
        limits; if not, it has been told why (one Error)."""
        peer = secure.peer
        try:
            self.home.trust.require(peer)
        except TrustError as exc:
            if self._log_limit.allow(ticket.source or "relay", trio.current_time()):
                log.warning('refused connection peer=%s from=%s error="%s"', peer.short, addr, exc)
            reason = "we do not trust you (ask our owner to 'trust add' your ID)"
            await secure.send_all(encode(m.Error(m.UNAUTHORIZED, reason)))
            return False
        if sum(self._peers.values()) >= MAX_CONNECTIONS or (
            self._peers[peer] >= MAX_CONNECTIONS_PER_PEER
        ):
            await secure.send_all(encode(m.Error(m.TOO_MANY_REQUESTS, "too many connections")))
            return False
        return True

    async def _attend(
        self, secure: SecureStream, addr: str, peer_host: str | None, local: bool
    ) -> None:
        """Count the connection against its peer (and its share) while it lasts."""
        peer = secure.peer
        self._peers[peer] += 1
        if self._on_connect is not None:
            route = "direct" if peer_host is not None else "relay"
            self._on_connect(peer, route, addr if peer_host else "")
        scope = trio.CancelScope()
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = Share.for_peer(self._per_peer)
        share.scopes.add(scope)
        try:
            log.log(self._connect_level(peer), "peer connected peer=%s from=%s", peer.short, addr)
            hint = (peer_host, 0) if peer_host is not None else None
            with scope:
                await self._pipeline.converse(secure, peer, hint, share, local)
        finally:
            share.scopes.discard(scope)
            if not share.scopes:
                del self._shares[peer]
            self._peers[peer] -= 1
            if not self._peers[peer]:
                del self._peers[peer]
                if len(self._last_left) >= MAX_REMEMBERED_PEERS:
                    self._last_left.clear()
                self._last_left[peer] = trio.current_time()

    def _connect_level(self, peer: PeerId) -> int:
        """INFO for a peer that arrives (no connection open, none for
        RECONNECT_QUIET seconds), DEBUG for a follower's every poll."""
        left = self._last_left.get(peer)
        if self._peers[peer] > 1 or (
            left is not None and trio.current_time() - left < RECONNECT_QUIET
        ):
            return logging.DEBUG
        return logging.INFO
