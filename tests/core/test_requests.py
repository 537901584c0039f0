"""Tests for p2pckpt.transfer.requests: one connection's request book, with
``now`` as a plain number and a real Scheduler behind it."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.errors import LocalProtocolError, NotFound, RemoteProtocolError
from p2pckpt.transfer.buffers import POOLED_MIN, BufferPool, Room
from p2pckpt.transfer.requests import (
    HAVE_POLL,
    MAX_DEPTH,
    PIPELINE,
    STALL_RELEASE,
    HaveApplied,
    Ignored,
    NotHere,
    Refused,
    RequestBook,
    Write,
    pipeline_depth,
)
from p2pckpt.transfer.schedule import Scheduler
from p2pckpt.wire import messages as m
from p2pckpt.wire.bitfield import bits_of, int_to_bitfield

ROOT = bytes(range(32))
SIZE = 1000  # bytes per chunk: small, the book only compares lengths
ZSTD = 1  # a codec number we offer in these tests (bit 1 of ``accept``)


@dataclass
class Src:
    """A source as the book sees it (``swarm.Source`` in real use)."""

    peer: str
    known: bool = False
    complete: bool = False
    giving: bool = False
    fixed: bool = False
    relayed: bool = False


def sched(n: int, seed: int = 0) -> Scheduler:
    return Scheduler([SIZE] * n, set(), random.Random(seed), initial_window=64)


def book(s: Scheduler, src: Src, **kw: Any) -> RequestBook:
    kw.setdefault("accept", 1 << ZSTD)
    kw.setdefault("max_window", 4 * PIPELINE)  # the book's depth is what limits
    return RequestBook(s, src, ROOT, f"{src.peer}@test", **kw)


def have(complete: bool = True, bits: Collection[int] = (), n: int = 0) -> m.Have:
    return m.Have(ROOT, complete, b"" if complete else int_to_bitfield(bits_of(bits), n))


def connected(s: Scheduler, peer: str = "a", **kw: Any) -> tuple[Src, RequestBook]:
    """A book whose source answered its first HaveRequest: it holds everything."""
    src = Src(peer)
    b = book(s, src, **kw)
    assert b.to_send(0.0) == [m.HaveRequest(ROOT)]
    assert b.on_message(have(), 0.0) == HaveApplied(complete=True)
    return src, b


def requests(msgs: list[m.Message]) -> list[m.ChunkRequest]:
    out = [x for x in msgs if isinstance(x, m.ChunkRequest)]
    assert len(out) == len(msgs), msgs
    return out


def chunk(req: m.ChunkRequest) -> m.ChunkData:
    return m.ChunkData(req.req_id, bytearray(SIZE))


# -- pipelining and req_ids ---------------------------------------------------------


def test_first_the_source_is_asked_what_it_holds() -> None:
    """A new connection asks for Have and nothing else; the answer puts the source
    in the scheduler, marked known (and complete, for a seeder)."""
    s = sched(10)
    src = Src("a")
    b = book(s, src)
    assert b.to_send(0.0) == [m.HaveRequest(ROOT)]
    assert not b.idle() and b.next_deadline() is None  # a Have is awaited
    assert b.to_send(0.1) == []  # one HaveRequest at a time
    assert b.on_message(have(), 0.2) == HaveApplied(complete=True)
    assert src.known and src.complete and "a" in s.peers
    assert b.idle() and b.next_deadline() is None  # a complete source is not polled again


def test_the_pipeline_fills_to_its_depth_and_a_received_chunk_frees_a_slot() -> None:
    """PIPELINE requests go out at once with ids 0, 1, ...; a chunk handed to the
    writer no longer counts toward the depth, so the next request goes out
    before it is written; ``written`` marks it done in the scheduler."""
    s = sched(20)
    _, b = connected(s)
    first = requests(b.to_send(0.0))
    assert [r.req_id for r in first] == list(range(PIPELINE))
    assert len({r.index for r in first}) == PIPELINE
    assert all(r.root == ROOT and r.accept == 1 << ZSTD for r in first)
    assert b.to_send(0.0) == [] and not b.idle()
    action = b.on_message(chunk(first[0]), 1.0)
    assert action == Write(first[0].req_id, first[0].index, bytearray(SIZE), 0)
    (more,) = requests(b.to_send(1.0))
    assert more.req_id == PIPELINE
    assert s.missing >> first[0].index & 1  # not done until written
    b.written(first[0].req_id, 1.5)
    assert not s.missing >> first[0].index & 1
    b.release(first[0].req_id)  # the writer's ``finally``: harmless after ``written``
    stats = b.statistics()
    assert (stats.asked, stats.received, stats.cancelled) == (PIPELINE, 0, 0)


def test_the_depth_is_a_parameter_and_the_scheduler_window_still_applies() -> None:
    s = sched(20)
    _, b = connected(s, depth=2)
    assert len(b.to_send(0.0)) == 2
    s2 = sched(20)
    _, narrow = connected(s2, max_window=3)  # the source's window in the scheduler
    assert len(narrow.to_send(0.0)) == 3


def test_a_quiet_connection_gives_back_what_another_source_holds() -> None:
    """A wedged source sits on its asked chunks: after STALL_RELEASE without a
    chunk, those another lively source holds are cancelled, go back to the
    pool and leave the room, and the quiet connection keeps one request
    asked (a probe, so the pump still reads from it) until a chunk arrives."""
    s = sched(6)
    room = Room(capacity=6 * SIZE)
    _, wedged = connected(s, "a", room=room, depth=2)
    asked = requests(wedged.to_send(0.0))
    _, other = connected(s, "b", room=room, depth=2)
    theirs = requests(other.to_send(0.0))
    assert room.used == 4 * SIZE and wedged.stall_deadline() == STALL_RELEASE
    for req in theirs:  # b delivers, late enough to be lively at the deadline
        other.on_message(chunk(req), STALL_RELEASE - 1.0)
        other.written(req.req_id, STALL_RELEASE - 1.0)
    assert wedged.to_send(STALL_RELEASE - 0.1) == []  # patience: not yet
    sent = wedged.to_send(STALL_RELEASE)
    assert sent[:2] == [m.Cancel(r.req_id) for r in asked]
    (probe,) = requests(sent[2:])  # one request stays asked, so the pump keeps listening
    assert not s.requested() & bits_of(r.index for r in asked)  # back in the pool
    assert room.used == SIZE  # the probe's
    assert wedged.to_send(STALL_RELEASE + 1.0) == []  # no more than the probe
    assert isinstance(wedged.on_message(chunk(probe), STALL_RELEASE + 2.0), Write)
    assert len(requests(wedged.to_send(STALL_RELEASE + 2.0))) == 2  # it spoke: full depth again


def test_a_quiet_connection_keeps_what_nobody_else_holds() -> None:
    """The only source of a chunk is waited for (the idle timeout decides)."""
    s = sched(4)
    _, only = connected(s, "a", depth=2)
    asked = requests(only.to_send(0.0))
    assert only.to_send(STALL_RELEASE + 1.0) == []  # nothing released, nothing asked
    assert s.requested() == bits_of(r.index for r in asked)
    assert only.stall_deadline() == STALL_RELEASE + 1.0 + STALL_RELEASE  # waits again


def test_the_pulls_room_bounds_what_is_asked_across_connections() -> None:
    """Two connections share one Room of 5 chunks: together they ask for no
    more than fits (plus at most one chunk), a chunk with the writer still
    holds its bytes, and its room comes back when it is written, cancelled,
    not found or lost, so the next request goes out (issue 16: memory stays
    flat however many streams a pull opens)."""
    s = sched(40)
    room = Room(capacity=5 * SIZE)
    _, b1 = connected(s, "a", room=room)
    src2 = Src("b")
    b2 = book(s, src2, room=room)
    assert b2.to_send(0.0) == [m.HaveRequest(ROOT)]
    b2.on_message(have(), 0.0)
    first = requests(b1.to_send(0.0))
    second = requests(b2.to_send(0.0))
    assert len(first) + len(second) == 5 and room.used == 5 * SIZE
    assert not room.has_room() and b1.to_send(0.0) == [] and b2.to_send(0.0) == []

    # With the writer: still in the room; written: out of it, one more goes out.
    b1.on_message(chunk(first[0]), 1.0)
    assert b1.to_send(1.0) == [] and room.used == 5 * SIZE
    b1.written(first[0].req_id, 1.1)
    assert room.used == 4 * SIZE
    (again,) = requests(b1.to_send(1.2))

    # Not here: its bytes come back at once.
    b1.on_message(m.Error(m.NOT_FOUND, "gone", first[1].req_id), 1.3)
    assert room.used == 4 * SIZE
    # Lost: every request of that connection comes back.
    b2.lost()
    assert room.used == (4 - len(second)) * SIZE
    # Delivered elsewhere: cancelled, and out of the room.
    s.done(again.index, "b", 1.4)
    sent = b1.to_send(1.5)
    assert m.Cancel(again.req_id) in sent
    assert (
        room.used
        == sum(SIZE for x in sent if isinstance(x, m.ChunkRequest)) + (len(first) - 2) * SIZE
    )


def test_the_pool_reuses_buffers_and_holds_no_more_than_its_capacity() -> None:
    k = POOLED_MIN
    pool = BufferPool(capacity=10 * k)
    a = pool.get(4 * k)
    pool.put(a)
    assert pool.get(4 * k) is a  # reused, not a fresh allocation
    b = pool.get(4 * k)
    assert b is not a and pool.in_use == 8 * k
    pool.put(a)
    pool.put(b)
    assert pool.free_bytes == 8 * k
    c = pool.get(3 * k)  # another size: the oldest free buffer makes way
    assert len(c) == 3 * k and pool.free_bytes == 4 * k
    assert pool.get(4 * k) is b  # the one left is still found by its size
    pool.put(b)
    assert pool.in_use + pool.free_bytes <= pool.capacity
    big = pool.get(20 * k)  # more than it may hold: handed out, never kept
    pool.put(big)
    assert pool.in_use == 3 * k and pool.in_use + pool.free_bytes <= pool.capacity
    lost = pool.get(4 * k)  # a connection died with it: never put back
    assert pool.in_use == 7 * k
    del lost  # collected: no longer counted
    assert pool.in_use == 3 * k
    small = pool.get(100)  # small bodies are plain allocations, not counted
    pool.put(small)
    assert pool.in_use == 3 * k and pool.get(100) is not small


def test_req_ids_wrap_at_2_32() -> None:
    """Ids are u32 on the wire: after 2**32 - 1 comes 0."""
    s = sched(20)
    _, b = connected(s, first_id=2**32 - 2)
    ids = [r.req_id for r in requests(b.to_send(0.0))]
    assert ids == [2**32 - 2, 2**32 - 1, 0, 1, 2, 3]


def test_a_wrapped_id_still_in_flight_is_skipped() -> None:
    """Once ids come round again, one still in flight (or cancelled, an answer
    still possible) is not given to a second request."""
    s = sched(20)
    _, b = connected(s, depth=3)
    asked = requests(b.to_send(0.0))  # ids 0, 1, 2
    assert b.on_message(chunk(asked[1]), 0.1) == Write(1, asked[1].index, bytearray(SIZE), 0)
    b.written(1, 0.2)
    b._next_id = 0  # as if 2**32 requests had gone by since id 0
    (again,) = requests(b.to_send(0.3))
    assert again.req_id == 1  # 0 is still asked; 1 is free again


# -- cancels: a chunk delivered elsewhere -------------------------------------------


def test_a_chunk_delivered_by_another_source_is_cancelled_and_its_late_answer_ignored() -> None:
    """Endgame: both sources were asked for one chunk; b's copy is written first,
    so a's request is cancelled, a's late answer is ignored (once), and a
    second answer to it is unrequested."""
    s = sched(3)
    _, a = connected(s, "a")
    _, b = connected(s, "b")
    asked_a = requests(a.to_send(0.0))
    assert sorted(r.index for r in asked_a) == [0, 1, 2]
    (dup,) = requests(b.to_send(1.0))[:1]  # nothing unrequested is left: a copy
    twin = next(r for r in asked_a if r.index == dup.index)
    assert isinstance(b.on_message(chunk(dup), 1.1), Write)
    b.written(dup.req_id, 1.2)
    assert a.to_send(1.3) == [m.Cancel(twin.req_id)]
    assert a.statistics().cancelled == 1
    assert a.on_message(chunk(twin), 1.4) == Ignored(twin.req_id)
    assert a.statistics().cancelled == 0
    with pytest.raises(RemoteProtocolError, match="sent an unrequested response"):
        a.on_message(chunk(twin), 1.5)


def test_a_late_error_for_a_cancelled_request_is_ignored() -> None:
    s = sched(1)
    _, a = connected(s, "a")
    (req,) = requests(a.to_send(0.0))
    s.done(req.index, "b")  # delivered by someone else
    assert a.to_send(0.1) == [m.Cancel(req.req_id)]
    err = m.Error(m.SOURCE_CHANGED, "gone", req.req_id)
    assert a.on_message(err, 0.2) == Ignored(req.req_id)
    assert a.idle()


def test_a_chunk_with_the_writer_is_not_cancelled() -> None:
    """Received, not yet written, then delivered elsewhere: no Cancel (the data
    is here already); the writer will find it no longer missing."""
    s = sched(1)
    _, a = connected(s, "a")
    (req,) = requests(a.to_send(0.0))
    assert isinstance(a.on_message(chunk(req), 0.1), Write)
    s.done(req.index, "b")
    assert a.to_send(0.2) == []
    a.release(req.req_id)  # the writer skipped it
    assert a.idle() and a.statistics().received == 0


def test_a_copy_skipped_while_another_is_written_is_asked_again_if_that_one_fails() -> None:
    """Two sources' copies of one chunk reach the writer together: one is
    written, the other skipped. If the written one then fails verification
    (its source banned), the chunk goes back to the pool and the other
    source is asked again; before, the scheduler kept waiting for the
    skipped request and the pull stalled until its timeout."""
    s = sched(1)
    _, a = connected(s, "a")
    _, b = connected(s, "b")
    (ra,) = requests(a.to_send(0.0))
    (rb,) = requests(b.to_send(0.0))  # an endgame copy of the same chunk
    assert ra.index == rb.index == 0
    assert isinstance(a.on_message(chunk(ra), 0.1), Write)
    assert isinstance(b.on_message(chunk(rb), 0.1), Write)
    b.skipped(rb.req_id)  # a's copy is being written
    s.ban("a")  # and it failed verification
    a.lost()
    assert s.missing == 1 and b.idle()
    (again,) = requests(b.to_send(0.2))
    assert again.index == 0


# -- protocol violations ------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (m.ChunkData(77, bytearray(SIZE)), r"a@test sent an unrequested response \(chunk\)"),
        (m.ChunkPacked(77, ZSTD, bytearray(10)), r"unrequested response \(chunk\)"),
        (m.Error(m.NOT_FOUND, "no", 77), r"a@test sent an unrequested response \(error\)"),
        (m.Have(ROOT, True), "peer a@test sent an unexpected message"),  # not asked for
        (m.ListResponse(()), "unexpected message"),
        (m.Error(m.INTERNAL, "no req_id"), "unexpected message"),
    ],
)
def test_an_unrequested_response_is_a_protocol_violation(msg: m.Message, needle: str) -> None:
    """An answer to nothing we asked ends the connection, and the book is finished."""
    s = sched(4)
    _, b = connected(s)
    requests(b.to_send(0.0))
    with pytest.raises(RemoteProtocolError, match=needle):
        b.on_message(msg, 1.0)
    with pytest.raises(LocalProtocolError):
        b.to_send(1.0)
    with pytest.raises(LocalProtocolError):
        b.on_message(msg, 1.0)
    assert sorted(b.lost()) == [0, 1, 2, 3]  # still possible: the requests go back


def test_a_second_answer_to_one_request_is_a_violation() -> None:
    s = sched(4)
    _, b = connected(s)
    req = requests(b.to_send(0.0))[0]
    assert isinstance(b.on_message(chunk(req), 0.1), Write)
    with pytest.raises(RemoteProtocolError, match="unrequested response"):
        b.on_message(chunk(req), 0.2)


def test_a_have_for_another_version_is_a_violation() -> None:
    s = sched(4)
    b = book(s, Src("a"))
    assert b.to_send(0.0) == [m.HaveRequest(ROOT)]
    with pytest.raises(RemoteProtocolError, match="unexpected message"):
        b.on_message(m.Have(bytes(32), True), 0.1)


@pytest.mark.parametrize(
    ("codec", "length", "accept"),
    [
        (2, 10, 1 << ZSTD),  # a codec we did not offer
        (ZSTD, 10, 0),  # we offered none
        (ZSTD, SIZE, 1 << ZSTD),  # "packed" into as many bytes as the chunk
        (ZSTD, SIZE + 1, 1 << ZSTD),  # or more
    ],
)
def test_a_packed_chunk_we_cannot_take_is_a_violation(codec: int, length: int, accept: int) -> None:
    s = sched(2)
    _, b = connected(s, accept=accept)
    req = requests(b.to_send(0.0))[0]
    with pytest.raises(RemoteProtocolError, match=f"packed a chunk with codec {codec}"):
        b.on_message(m.ChunkPacked(req.req_id, codec, bytearray(length)), 0.1)


def test_a_packed_chunk_smaller_than_the_chunk_is_written_with_its_codec() -> None:
    s = sched(2)
    _, b = connected(s)
    req = requests(b.to_send(0.0))[0]
    packed = m.ChunkPacked(req.req_id, ZSTD, bytearray(SIZE - 1))
    assert b.on_message(packed, 0.1) == Write(req.req_id, req.index, bytearray(SIZE - 1), ZSTD)


# -- Have polling -------------------------------------------------------------------


def test_a_partial_source_is_polled_every_have_poll_seconds() -> None:
    """A source still pulling is asked again HAVE_POLL after each Have arrived
    (not after it was asked); what it gained is requested; once complete it
    is polled no more."""
    n = 4
    s = sched(n)
    src = Src("p")
    b = book(s, src)
    assert b.to_send(10.0) == [m.HaveRequest(ROOT)]
    assert b.on_message(have(False, {0}, n), 10.25) == HaveApplied(complete=False)
    assert src.known and not src.complete
    (req,) = requests(b.to_send(10.25))
    assert req.index == 0
    assert b.next_deadline() == 10.25 + HAVE_POLL
    assert b.to_send(10.25 + HAVE_POLL - 0.01) == []
    assert b.to_send(10.25 + HAVE_POLL) == [m.HaveRequest(ROOT)]
    assert b.next_deadline() is None  # awaiting it
    assert b.to_send(99.0) == []  # never two at once, however long it takes
    assert isinstance(b.on_message(have(False, {0, 2}, n), 99.0), HaveApplied)
    assert [r.index for r in requests(b.to_send(99.0))] == [2]
    assert b.to_send(99.0 + HAVE_POLL) == [m.HaveRequest(ROOT)]
    assert b.on_message(have(True), 99.75) == HaveApplied(complete=True)
    assert sorted(r.index for r in requests(b.to_send(99.75))) == [1, 3]
    assert b.next_deadline() is None
    assert b.to_send(1000.0) == []


def test_a_multi_host_share_is_asked_once_and_never_polled() -> None:
    """A host's share of a multi-host version says ``fixed``: it holds only
    its own files, for good, so its chunks are asked for and it is not
    polled again (issue 21 item 2)."""
    n = 4
    s = sched(n)
    src = Src("host-2")
    b = book(s, src)
    assert b.to_send(0.0) == [m.HaveRequest(ROOT)]
    share = m.Have(ROOT, False, int_to_bitfield(bits_of({1, 2}), n), b"", True)
    assert b.on_message(share, 0.1) == HaveApplied(complete=False)
    assert src.fixed and not src.complete and s.holds("host-2") == bits_of({1, 2})
    assert sorted(r.index for r in requests(b.to_send(0.1))) == [1, 2]
    assert b.next_deadline() is None
    assert b.to_send(1000.0) == []  # no HaveRequest, ever


def test_only_the_polling_connection_asks_and_another_carries_on() -> None:
    """Of a source's connections only the ``polling`` one asks for Have; when it
    is gone, another connection of the same (already known) source polls at
    once, and its Have updates what the source holds."""
    n = 4
    s = sched(n)
    src = Src("p")
    first = book(s, src)
    second = book(s, src, polling=False)
    assert second.to_send(0.0) == [] and second.next_deadline() is None
    assert first.to_send(0.0) == [m.HaveRequest(ROOT)]
    first.on_message(have(False, {0}, n), 0.1)
    assert s.holds("p") == bits_of({0})
    first.lost()  # the polling connection broke
    second.polling = True
    assert second.next_deadline() == -float("inf")  # due now
    msgs = second.to_send(0.2)
    assert msgs[0] == m.HaveRequest(ROOT)  # and chunk 0 requested after it
    assert [r.index for r in requests(msgs[1:])] == [0]
    second.on_message(have(False, {1}, n), 0.3)  # known already: an update, not a join
    assert s.holds("p") == bits_of({0, 1})


def test_a_seeder_saying_what_it_gave_others_is_polled_until_it_gave_everything() -> None:
    """A complete Have with bits is a seeder saying which chunks it gave
    pullers connected to it: followed every HAVE_POLL (it changes as they
    pull), until every chunk is out. An older seeder sends no bits: not
    polled again, nothing counts as given."""
    n = 4
    s = sched(n)
    src = Src("seeder")
    b = book(s, src)
    assert b.to_send(0.0) == [m.HaveRequest(ROOT)]
    assert b.on_message(m.Have(ROOT, True, b"\x00"), 0.0) == HaveApplied(complete=True)
    assert src.complete and src.giving and s._peers["seeder"].given == 0
    b.to_send(0.0)  # chunks asked
    assert b.next_deadline() == HAVE_POLL
    assert m.HaveRequest(ROOT) in b.to_send(HAVE_POLL)
    b.on_message(m.Have(ROOT, True, int_to_bitfield(bits_of({1, 3}), n)), 0.6)
    assert src.giving and s._peers["seeder"].given == bits_of({1, 3})
    assert m.HaveRequest(ROOT) in b.to_send(0.6 + HAVE_POLL)
    b.on_message(m.Have(ROOT, True, b"\xff"), 1.2)  # past the last chunk: masked
    assert not src.giving and s._peers["seeder"].given == bits_of(range(n))
    assert b.next_deadline() is None and m.HaveRequest(ROOT) not in b.to_send(100.0)
    older = Src("older")
    b2 = book(sched(n), older)
    b2.to_send(0.0)
    b2.on_message(m.Have(ROOT, True), 0.0)
    assert older.complete and not older.giving and b2.next_deadline() is None


def test_what_a_partial_source_is_fetching_counts_as_soon_available() -> None:
    n = 4
    s = sched(n)
    b = book(s, Src("p"))
    b.to_send(0.0)
    fetching = int_to_bitfield(bits_of({3}), n)
    b.on_message(m.Have(ROOT, False, int_to_bitfield(bits_of({0}), n), fetching), 0.1)
    assert s._peers["p"].soon == bits_of({3})


# -- errors -------------------------------------------------------------------------


def test_not_found_returns_the_chunk_to_the_scheduler() -> None:
    """A source that says it lacks a chunk loses that claim, the chunk goes back
    to the pool for another source, and the connection carries on."""
    s = sched(2)
    _, a = connected(s, "a", depth=1)
    (req,) = requests(a.to_send(0.0))
    err = m.Error(m.NOT_FOUND, "chunk not verified here yet", req.req_id)
    assert a.on_message(err, 0.1) == NotHere(req.index)
    assert not s.holds("a") >> req.index & 1
    assert s.outstanding == 0
    (other,) = requests(a.to_send(0.2))
    assert other.index != req.index  # not asked of a again
    s.add_peer("b", None, max_window=1)
    assert s.pick("b", 0.3) == req.index  # but b may have it


def test_any_other_error_ends_the_connection() -> None:
    """An Error other than not found is returned as Refused (the pump raises it);
    the book is finished and ``lost`` gives every request back, that one too."""
    s = sched(3)
    _, a = connected(s, "a")
    asked = requests(a.to_send(0.0))
    err = m.Error(m.SOURCE_CHANGED, "the seeder's copy changed", asked[1].req_id)
    assert a.on_message(err, 0.1) == Refused(err)
    with pytest.raises(LocalProtocolError):
        a.to_send(0.2)
    assert sorted(a.lost()) == [0, 1, 2]
    assert s.outstanding == 0
    s.add_peer("b", None, max_window=3)
    assert {s.pick("b", 0.3) for _ in range(3)} == {0, 1, 2}


def test_a_lost_connection_returns_chunks_with_the_writer_too() -> None:
    s = sched(3)
    _, a = connected(s, "a")
    asked = requests(a.to_send(0.0))
    a.on_message(chunk(asked[0]), 0.1)  # with the writer, never written
    assert sorted(a.lost()) == [0, 1, 2]
    assert s.outstanding == 0 and s.missing == bits_of({0, 1, 2})


# -- books back to back with servers ------------------------------------------------


def serve(msg: m.Message, holds: set[int], n: int) -> m.Message | None:
    """What a well-behaved seeder holding ``holds`` answers (Cancel: nothing)."""
    if isinstance(msg, m.HaveRequest):
        full = len(holds) == n
        return m.Have(ROOT, full, b"" if full else int_to_bitfield(bits_of(holds), n))
    if isinstance(msg, m.ChunkRequest):
        if msg.index in holds:
            return m.ChunkData(msg.req_id, bytearray(SIZE))
        return m.Error(m.NOT_FOUND, "not here", msg.req_id)
    return None


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 24),
    partial=st.sets(st.integers(0, 23)),
    order=st.randoms(use_true_random=False),
)
def test_two_sources_in_any_order_write_every_chunk_once(
    n: int, partial: set[int], order: random.Random
) -> None:
    """A seeder and a partial source, their answers delivered in a random order,
    Cancels and late answers included: every chunk is written exactly once
    and both books end idle."""
    s = sched(n, seed=order.randrange(100))
    holds = {"seed": set(range(n)), "part": {i for i in partial if i < n}}
    books = {k: book(s, Src(k)) for k in holds}
    wire: list[tuple[str, m.Message]] = []  # answers on their way back
    written: list[int] = []
    now = 0.0
    for _ in range(10_000):
        if s.complete and all(b.idle() for b in books.values()):
            break  # where the pump's connections return
        now += 0.01
        for key, b in books.items():
            for msg in b.to_send(now):
                answer = serve(msg, holds[key], n)
                if answer is not None:
                    wire.append((key, answer))
        if not wire:
            continue  # waiting for the next Have poll
        key, answer = wire.pop(order.randrange(len(wire)))
        action = books[key].on_message(answer, now)
        if isinstance(action, Write):
            if s.missing >> action.index & 1:  # what the writer checks
                written.append(action.index)
                books[key].written(action.req_id, now)
            books[key].release(action.req_id)
    assert s.complete
    assert sorted(written) == list(range(n))
    assert all(b.idle() for b in books.values())


@pytest.mark.parametrize(
    ("sizes", "depth"),
    [
        ([4 << 20] * 100, PIPELINE),  # full chunks: the plain pipeline
        ([10_000] * 10_000, MAX_DEPTH),  # a folder of small files: as deep as a server allows
        ([32 << 10] * 100, 32),  # about SMALL_PIPELINE_BYTES of tiny chunks
        ([256 << 10] * 100, PIPELINE),  # not for chunks a swarm trades (push test, 1.94x)
        ([], PIPELINE),
    ],
)
def test_small_chunks_keep_more_requests_asked(sizes: list[int], depth: int) -> None:
    assert pipeline_depth(sizes) == depth
    assert PIPELINE <= pipeline_depth(sizes) <= MAX_DEPTH < m.MAX_OUTSTANDING


def test_a_complete_source_that_now_holds_nothing_has_withdrawn_the_version() -> None:
    """A seeder that held the version whole and then answers Have with none
    of it (unpublished, forgotten by gc, retired) is not waited for: the
    source ends with NotFound. One still holding part of it is a partial
    source like any other."""
    n = 4
    b = book(sched(n), Src("seeder"))
    b.to_send(0.0)
    b.on_message(m.Have(ROOT, True, b"\x00"), 0.0)  # whole, and followed (gave nothing yet)
    assert m.HaveRequest(ROOT) in b.to_send(HAVE_POLL)
    with pytest.raises(NotFound, match="seeder@test no longer offers this version"):
        b.on_message(m.Have(ROOT, False, b"\x00"), HAVE_POLL)
    src2 = Src("other")
    b2 = book(sched(n), src2)
    b2.to_send(0.0)
    b2.on_message(m.Have(ROOT, True, b"\x00"), 0.0)
    assert m.HaveRequest(ROOT) in b2.to_send(HAVE_POLL)
    assert b2.on_message(have(False, {2}, n), HAVE_POLL) == HaveApplied(complete=False)
    assert not src2.complete
