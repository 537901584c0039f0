"""One connection's requests, as the puller keeps them: the request book.

Pure: no I/O, no trio, no clock of its own. The pump (``swarm.py``) tells
the book the time, sends what ``to_send`` returns, hands it every message
that arrives (``on_message``) and does what the returned action says. The
book drives the swarm's ``Scheduler``: it asks it which chunk to request,
tells it which chunks were written, which the source lacks and what the
source holds.

Theory of operation. A request (a req_id for one chunk index) is

    asked      ChunkRequest sent, no answer yet; at most ``depth`` of these
               (the pipeline), and none goes out while the pull's ``Room``
               is full: asked and received chunks hold their size in it
    received   its chunk is with the writer (verify, write); it no longer
               counts toward the pipeline, but is still in flight: if the
               connection breaks first, it goes back to the scheduler
    cancelled  the scheduler no longer misses its chunk (another source, or
               another connection, delivered it), or the connection was
               quiet for STALL_RELEASE and another lively source holds it:
               Cancel sent, the request forgotten; a late answer to it is
               dropped without a word

Who triggers what:

    to_send(now)      Cancels for asked chunks no longer missing, and for
                      those released from a quiet connection
                      (``stall_deadline``: it keeps one request asked, a
                      probe, until a chunk arrives); a
                      HaveRequest when this connection is the source's
                      ``polling`` one, no Have is awaited, the source is not
                      known to be complete (or is, but says what it has
                      given: ``giving``) and HAVE_POLL passed since the
                      last Have; then ChunkRequests, picked by the
                      scheduler, until ``depth`` are asked or the room
                      is full.
    on_message(msg)   a chunk answering an asked request -> Write (asked ->
                      received); a late answer to a cancelled one -> Ignored;
                      the awaited Have -> HaveApplied; Error(not_found) ->
                      NotHere (the chunk goes back to the scheduler's pool);
                      any other Error -> Refused (the connection ends);
                      anything else raises RemoteProtocolError.
    written(req_id)   the writer verified and wrote the chunk: done in the
                      scheduler. ``skipped``: another copy was being
                      written, this request ended without the chunk.
                      ``release`` (written or not): forgotten.
    lost()            the connection broke: what is in flight goes back.

Invariants: req_ids are u32 and wrap at 2**32, never reusing one in flight
or cancelled; a Have is accepted only while one is awaited (one at a time);
a packed chunk must use a codec we offered and be shorter than the chunk.
After a protocol violation, a refusal or ``lost`` the book is finished:
``to_send`` and ``on_message`` raise LocalProtocolError.

What a source told us (its first Have arrived: ``known``; ``complete``) is
shared by its connections, so it lives on the source (``SourceStatus``),
not in one connection's book: whichever connection polls next carries on.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Protocol

from p2pckpt.errors import LocalProtocolError, NotFound, RemoteProtocolError
from p2pckpt.manifest.chunker import CHUNK_SIZE
from p2pckpt.transfer.buffers import Room
from p2pckpt.transfer.schedule import PATIENCE, Scheduler
from p2pckpt.wire import messages as m
from p2pckpt.wire.bitfield import bitfield_to_int

PIPELINE: Final = 6  # requests asked and unanswered per connection (full chunks)
MAX_DEPTH: Final = m.MAX_OUTSTANDING * 3 // 4  # asked at once on one connection, at most
SMALL_PIPELINE_BYTES: Final = 1 << 20  # what tiny chunks may have asked on one connection
HAVE_POLL: Final = 0.5  # seconds between Have requests to a source still pulling
# A connection that answered nothing for this long, with requests asked, gives
# back those another lively source holds (and keeps one request asked, a
# probe, until a chunk arrives): a wedged peer must not hold part of the
# pull's Room until the idle timeout. Twice PATIENCE: a source shared by a
# swarm may take a few seconds per chunk and still be sound.
STALL_RELEASE: Final = 2 * PATIENCE
REQ_ID_MASK: Final = 0xFFFFFFFF  # req_ids are u32 on the wire


def pipeline_depth(sizes: list[int]) -> int:
    """Requests one connection keeps asked: PIPELINE, and more for tiny
    chunks (a folder of small files would otherwise wait a round trip per
    few kB): about SMALL_PIPELINE_BYTES of them, within what a server
    accepts (MAX_OUTSTANDING). Not more for chunks of a few hundred kB: a
    deep blind pipeline at a shared seeder is how pullers of one swarm end
    up fetching the same chunks from it."""
    mean = sum(sizes) / len(sizes) if sizes else CHUNK_SIZE
    return max(PIPELINE, min(MAX_DEPTH, int(SMALL_PIPELINE_BYTES / max(mean, 1))))


class SourceStatus(Protocol):
    """What the book reads and updates about a source (all its connections')."""

    @property
    def peer(self) -> Hashable: ...  # its key in the scheduler

    known: bool  # its first Have has arrived (it is in the scheduler)
    complete: bool  # it holds every chunk: no more Have polling, unless ``giving``
    giving: bool  # complete, and says which chunks it has given other pullers: polled on
    fixed: bool  # a multi-host share: what it holds will not grow, no more polling

    @property
    def relayed(self) -> bool: ...  # reached through a relay (the expensive path)


@dataclass(frozen=True, slots=True)
class Write:
    """Verify and write this chunk (``codec`` 0: raw, else unpack it first),
    then call ``written`` if it was written and ``release`` either way."""

    req_id: int
    index: int
    data: bytes | bytearray
    codec: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A late answer to a request we cancelled: nothing to do."""

    req_id: int


@dataclass(frozen=True, slots=True)
class HaveApplied:
    """The source's Have reached the scheduler: other connections may have work."""

    complete: bool


@dataclass(frozen=True, slots=True)
class NotHere:
    """The source lacks chunk ``index`` after all: it is back in the pool."""

    index: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The source refused a request (an Error other than not found): the
    connection ends with this error; its requests are lost."""

    error: m.Error


Action = Write | Ignored | HaveApplied | NotHere | Refused


@dataclass(frozen=True, slots=True)
class BookStatistics:
    asked: int  # requests sent and unanswered (at most the depth)
    received: int  # answered, with the writer
    cancelled: int  # cancelled, a late answer still possible
    have_pending: bool


class RequestBook:
    """The puller's side of one connection to ``source``: what was asked,
    what came back, and what to do about it."""

    def __init__(
        self,
        sched: Scheduler,
        source: SourceStatus,
        root: bytes,
        label: str,
        *,
        accept: int = 0,
        max_window: int = PIPELINE,
        depth: int = PIPELINE,
        have_poll: float = HAVE_POLL,
        polling: bool = True,
        first_id: int = 0,
        room: Room | None = None,
    ) -> None:
        """Args:
        sched: the swarm's scheduler (shared by every book).
        source: the source this connection goes to (shared by its books).
        root: the version's root digest.
        label: how errors name the peer.
        accept: the codecs our chunk requests offer (bit c = codec c).
        max_window: the most requests the scheduler gives the source at
            once (all its connections), set when its first Have arrives.
        depth: requests asked and unanswered at most.
        have_poll: seconds between Have requests.
        polling: whether this connection asks for Have (one per source;
            the pump keeps the attribute up to date as connections come
            and go).
        first_id: the first req_id (tests start near the wrap).
        room: the pull's budget for chunk bodies, shared by every book: a
            request takes its chunk's size until it is written or given up,
            and none goes out while the room is full.
        """
        self._sched = sched
        self._source = source
        self._root = root
        self._label = label
        self._accept = accept
        self._max_window = max_window
        self._depth = depth
        self._have_poll = have_poll
        self.polling = polling
        self._next_id = first_id & REQ_ID_MASK
        self._inflight: dict[int, int] = {}  # req_id -> chunk index: asked or received
        self._received: set[int] = set()  # req_ids whose chunk is with the writer
        self._cancelled: set[int] = set()  # req_ids cancelled, an answer still possible
        self._have_pending = False
        self._last_have = -math.inf  # when the last Have arrived
        self._finished = False
        self._room = room or Room(capacity=1 << 62)
        self._quiet_since = -math.inf  # last chunk answer, or when asking began after none was
        self._muted = False  # released stalled requests: one asked at a time until it answers
        self.released = 0  # requests given back from this connection for its quiet

    # -- what to send ------------------------------------------------------------

    def to_send(self, now: float) -> list[m.Message]:
        """The messages to send now, in order: Cancels, a HaveRequest, ChunkRequests."""
        self._check_open()
        out: list[m.Message] = []
        missing = self._sched.missing
        deadline = self.stall_deadline()
        stalled = deadline is not None and now >= deadline
        for req_id, index in list(self._inflight.items()):
            if req_id in self._received:
                continue
            if not missing >> index & 1:
                self._forget(req_id)  # the scheduler already counted it done
            elif stalled and self._sched.held_elsewhere(index, self._source.peer, now):
                self._forget(req_id)
                self._sched.failed(index, self._source.peer)  # back to the pool
                self._muted = True
                self.released += 1
            else:
                continue
            self._cancelled.add(req_id)
            out.append(m.Cancel(req_id))
        if stalled:
            self._quiet_since = now  # what is left waits another STALL_RELEASE
        if self._have_due(now):
            self._have_pending = True
            out.append(m.HaveRequest(self._root))
        room = self._room
        if self._asked() == 0:
            self._quiet_since = now  # nothing was awaited: the quiet starts now
        # A muted connection keeps one request asked, as a probe: an idle book
        # is not read from, and one with nothing asked would never be heard again.
        depth = 1 if self._muted else self._depth
        while self._asked() < depth and room.has_room():
            chosen = self._sched.pick(self._source.peer, now)
            if chosen is None:
                break
            req_id = self._new_id()
            self._inflight[req_id] = chosen
            room.take(self._sched.sizes[chosen])
            out.append(m.ChunkRequest(req_id, self._root, chosen, self._accept))
        return out

    def _have_due(self, now: float) -> bool:
        if not self.polling or self._have_pending or self._done_polling():
            return False
        return now - self._last_have >= self._have_poll

    def _done_polling(self) -> bool:
        return (self._source.complete and not self._source.giving) or self._source.fixed

    def _new_id(self) -> int:
        req_id = self._next_id
        while req_id in self._inflight or req_id in self._cancelled:  # only after a wrap
            req_id = (req_id + 1) & REQ_ID_MASK
        self._next_id = (req_id + 1) & REQ_ID_MASK
        return req_id

    def _asked(self) -> int:
        return len(self._inflight) - len(self._received)

    def idle(self) -> bool:
        """Nothing is asked and no Have awaited: no answer is coming."""
        return self._asked() == 0 and not self._have_pending

    def stall_deadline(self) -> float | None:
        """When the chunks asked on this connection count as stalled if
        nothing arrives before (absolute), or None: none is asked."""
        if self._asked() == 0:
            return None
        return self._quiet_since + STALL_RELEASE

    def next_deadline(self) -> float | None:
        """When the next HaveRequest is due (absolute; in the past: now), or
        None if none will be: this connection does not poll, the source is
        complete (and not ``giving``), or a Have is awaited already."""
        if not self.polling or self._have_pending or self._done_polling():
            return None
        return self._last_have + self._have_poll

    # -- what arrives ------------------------------------------------------------

    def on_message(self, msg: m.Message, now: float) -> Action:
        """What to do about ``msg``, received at ``now``.

        Raises:
            RemoteProtocolError: the peer answered what we did not ask, sent
                a Have we did not ask for, a message a server never sends,
                or packed a chunk with a codec we did not offer or into no
                fewer bytes than the chunk. The book is finished then.
        """
        self._check_open()
        if isinstance(msg, m.ChunkData | m.ChunkPacked | m.Error):  # not a Have: chunks flow
            self._quiet_since, self._muted = now, False
        try:
            if isinstance(msg, m.ChunkData | m.ChunkPacked):
                return self._on_chunk(msg)
            if isinstance(msg, m.Have) and self._have_pending and msg.root == self._root:
                return self._on_have(msg, now)
            if isinstance(msg, m.Error) and msg.req_id is not None:
                return self._on_error(msg, msg.req_id)
            raise RemoteProtocolError(f"peer {self._label} sent an unexpected message")
        except RemoteProtocolError:
            self._finished = True
            raise

    def _answered(self, req_id: int, what: str) -> int | None:
        """The chunk an answer to ``req_id`` is for; None for a cancelled request."""
        if req_id in self._inflight and req_id not in self._received:
            return self._inflight[req_id]
        if req_id in self._cancelled:
            self._cancelled.discard(req_id)
            return None
        raise RemoteProtocolError(f"{self._label} sent an unrequested response ({what})")

    def _on_chunk(self, msg: m.ChunkData | m.ChunkPacked) -> Action:
        codec = msg.codec if isinstance(msg, m.ChunkPacked) else 0
        index = self._answered(msg.req_id, "chunk")
        if index is None:
            return Ignored(msg.req_id)
        # A codec we did not offer, or packing that saves nothing, is a peer
        # making us unpack for no reason (or into a buffer that does not fit).
        if codec and not (self._accept >> codec & 1 and len(msg.data) < self._sched.sizes[index]):
            raise RemoteProtocolError(
                f"{self._label} packed a chunk with codec {codec}, which we did"
                " not offer, or into no fewer bytes than the chunk"
            )
        self._received.add(msg.req_id)
        return Write(msg.req_id, index, msg.data, codec)

    def _on_have(self, msg: m.Have, now: float) -> Action:
        self._have_pending, self._last_have = False, now
        src, sched = self._source, self._sched
        bits = None if msg.complete else bitfield_to_int(msg.bits, sched.count)
        if src.complete and not msg.complete and not bits and not any(msg.fetching):
            # It held the version whole and now holds none of it, nor fetches
            # any: its owner took it back (unpublish, gc, retention).
            raise NotFound(f"{self._label} no longer offers this version")
        src.complete = msg.complete
        src.fixed = msg.fixed and not msg.complete
        if not src.known:
            src.known = True
            sched.add_peer(src.peer, bits, max_window=self._max_window, relayed=src.relayed)
        else:
            sched.update_have(src.peer, (1 << sched.count) - 1 if bits is None else bits)
        fetching = 0 if msg.complete else bitfield_to_int(msg.fetching, sched.count)
        sched.update_soon(src.peer, fetching)
        # A complete source may say what it has given other pullers (older
        # ones send no bits): followed until it has given everything.
        given = bitfield_to_int(msg.bits, sched.count) if msg.complete else 0
        src.giving = msg.complete and bool(msg.bits) and given != (1 << sched.count) - 1
        if given:
            sched.update_given(src.peer, given)
        return HaveApplied(msg.complete)

    def _on_error(self, msg: m.Error, req_id: int) -> Action:
        index = self._answered(req_id, "error")
        if index is None:
            return Ignored(req_id)
        if msg.code != m.NOT_FOUND:
            self._finished = True  # its request goes back with the rest (``lost``)
            return Refused(msg)
        self._forget(req_id)
        self._sched.lacks(self._source.peer, index)
        self._sched.failed(index, self._source.peer)
        return NotHere(index)

    # -- the writer and the end --------------------------------------------------

    def written(self, req_id: int, now: float) -> None:
        """The writer verified and wrote ``req_id``'s chunk at ``now``."""
        index = self._inflight.get(req_id)
        if index is not None and req_id in self._received:
            self._sched.done(index, self._source.peer, now)
        self.release(req_id)

    def skipped(self, req_id: int) -> None:
        """The writer did not write ``req_id``'s chunk: another source's copy
        was being written. This request ends without the chunk, so if that
        copy fails verification the chunk goes back to the pool (else the
        scheduler would wait forever for this source to deliver it)."""
        index = self._inflight.get(req_id)
        if index is not None and req_id in self._received:
            self._sched.failed(index, self._source.peer)
        self.release(req_id)

    def release(self, req_id: int) -> None:
        """The writer is finished with ``req_id`` (written, a copy another
        source delivered first, or failed); safe to call twice."""
        if req_id in self._received:
            self._received.discard(req_id)
            self._forget(req_id)

    def lost(self) -> list[int]:
        """The connection broke: every chunk in flight goes back to the
        scheduler (returned); the book is finished."""
        indices = list(self._inflight.values())
        for index in indices:
            self._sched.failed(index, self._source.peer)
            self._room.give(self._sched.sizes[index])
        self._inflight.clear()
        self._received.clear()
        self._finished = True
        return indices

    def _forget(self, req_id: int) -> None:
        """``req_id`` is no longer in flight: its chunk's bytes leave the room."""
        self._room.give(self._sched.sizes[self._inflight.pop(req_id)])

    def statistics(self) -> BookStatistics:
        return BookStatistics(
            asked=len(self._inflight) - len(self._received),
            received=len(self._received),
            cancelled=len(self._cancelled),
            have_pending=self._have_pending,
        )

    def _check_open(self) -> None:
        if self._finished:
            raise LocalProtocolError("this connection's request book is finished")
