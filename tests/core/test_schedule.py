"""Tests for p2pckpt.transfer.schedule: rarest first, speed windows, endgame, faults."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.transfer.schedule import (
    DIRECT_GRACE,
    ENDGAME_COPIES,
    INITIAL_WINDOW,
    MAX_RUN,
    PATIENCE,
    Scheduler,
)
from p2pckpt.wire.bitfield import bitfield_to_int, bits_of, indices_of, int_to_bitfield

MB4 = 4 << 20


def sched(n: int, have: set[int] | None = None, seed: int = 0, initial: int = 64) -> Scheduler:
    """``initial``: the window before a rate is known (most tests want it out of the way)."""
    return Scheduler([MB4] * n, have or set(), random.Random(seed), initial)


def check_invariants(s: Scheduler) -> None:
    """Every missing chunk is in exactly one place: a pool bucket at its true
    availability, or requested; inflight counts match the requests."""
    buckets = s._buckets
    for level, bits in enumerate(buckets):
        for i in indices_of(bits):
            assert s.missing >> i & 1
            assert i not in s._requests
            avail = sum(1 for p in s._peers.values() if (p.bits | p.soon) >> i & 1)
            assert avail == level, (i, avail, level)
    pooled = 0
    for bits in buckets:
        assert pooled & bits == 0  # no chunk in two buckets
        pooled |= bits
    assert pooled | bits_of(s._requests) == s.missing
    for key, peer in s._peers.items():
        assert peer.inflight == sum(1 for h in s._requests.values() if key in h)
        assert peer.bits & peer.soon == 0


def test_bitfield_round_trip() -> None:
    bits = bits_of([0, 3, 8, 99])
    assert bitfield_to_int(int_to_bitfield(bits, 100), 100) == bits
    assert bitfield_to_int(b"\xff\xff", 10) == (1 << 10) - 1  # excess bits ignored
    assert indices_of(bits) == [0, 3, 8, 99]


def test_one_full_peer_gets_every_chunk_within_its_window() -> None:
    s = sched(10, have={2})
    s.add_peer("a", None, max_window=4)
    asked = [s.pick("a", 0.0) for _ in range(6)]
    assert asked[4:] == [None, None]  # window of 4
    got = {i for i in asked if i is not None}
    assert len(got) == 4 and 2 not in got
    while not s.complete:
        for i in list(got):
            assert s.done(i, "a") == []
        got = {i for i in (s.pick("a", 1.0) for _ in range(4)) if i is not None}
        check_invariants(s)
    assert s.outstanding == 0


def test_rarest_chunks_first() -> None:
    """A seeder has everything, a fellow puller only chunks 0-3: the seeder is
    asked for the chunks only it has, the puller for the ones it has."""
    s = sched(8)
    s.add_peer("seeder", None, max_window=4)
    s.add_peer("puller", bits_of(range(4)), max_window=4)
    from_seeder = {s.pick("seeder", 0.0) for _ in range(4)}
    assert from_seeder == {4, 5, 6, 7}
    from_puller = {s.pick("puller", 0.0) for _ in range(4)}
    assert from_puller == {0, 1, 2, 3}
    check_invariants(s)


def test_ties_are_broken_at_random_so_pullers_spread() -> None:
    firsts = set()
    for seed in range(20):
        s = sched(64, seed=seed)
        s.add_peer("seeder", None, max_window=1)
        firsts.add(s.pick("seeder", 0.0))
    assert len(firsts) >= 10


def test_a_slow_peer_gets_a_small_window() -> None:
    s = sched(100)
    s.add_peer("fast", None, max_window=8)
    s.add_peer("slow", None, max_window=8)
    for key, seconds in (("fast", 0.1), ("slow", 10.0)):
        first = [s.pick(key, 0.0), s.pick(key, 0.0)]
        for i in first:
            assert i is not None
            s.done(i, key)
        assert s.window(key, seconds) == (8 if key == "fast" else 1)
    # at 2 chunks per 10 s, WINDOW_SECONDS of work is a single chunk
    assert s.pick("slow", 10.0) is not None
    assert s.pick("slow", 10.0) is None
    check_invariants(s)


def test_endgame_duplicates_the_oldest_request_and_names_the_loser() -> None:
    s = sched(3)
    s.add_peer("a", None, max_window=3)
    s.add_peer("b", None, max_window=3)
    early = s.pick("a", 0.0)
    s.pick("a", 1.0)
    s.pick("a", 2.0)
    assert s.pick("b", 3.0) == early  # nothing left unrequested: the oldest is doubled
    second = s.pick("b", 3.0)
    assert second is not None and second != early
    assert s.done(early, "b") == ["a"]  # b won; a's copy is to be cancelled
    assert s._peers["a"].inflight == 2
    check_invariants(s)
    # at most ENDGAME_COPIES copies of one chunk at once
    s.add_peer("c", None, max_window=3)
    while s.pick("c", 4.0) is not None:
        pass
    assert all(len(h) <= ENDGAME_COPIES for h in s._requests.values())
    check_invariants(s)


def test_a_banned_peer_loses_its_chunks_to_others_and_stays_out() -> None:
    s = sched(4)
    s.add_peer("bad", None, max_window=4)
    s.add_peer("good", None, max_window=1)
    taken = {s.pick("bad", 0.0) for _ in range(4)}
    assert taken == {0, 1, 2, 3}
    assert sorted(s.ban("bad")) == [0, 1, 2, 3]
    s.add_peer("bad", None, max_window=4)  # reconnecting does not help it
    assert "bad" not in s.peers and s.pick("bad", 0.0) is None
    check_invariants(s)
    got = []
    while not s.complete:
        i = s.pick("good", 1.0)
        assert i is not None
        s.done(i, "good")
        got.append(i)
    assert sorted(got) == [0, 1, 2, 3]


def test_a_vanished_peer_leaves_only_what_others_have() -> None:
    s = sched(4)
    s.add_peer("p1", bits_of([0, 1]), max_window=2)
    s.add_peer("p2", bits_of([1, 2, 3]), max_window=4)
    assert {s.pick("p1", 0.0), s.pick("p1", 0.0)} == {0, 1}
    s.remove("p1")
    check_invariants(s)
    assert s.unavailable() == bits_of([0])  # nobody else has chunk 0
    picks = {s.pick("p2", 0.0) for _ in range(4)}
    assert picks == {1, 2, 3, None}
    s.update_have("p2", bits_of([0]))  # p2 got chunk 0 meanwhile
    assert s.pick("p2", 0.0) == 0
    assert s.pick("p2", 0.0) is None  # window (4) is full
    check_invariants(s)


def test_lacks_puts_the_chunk_back_for_others() -> None:
    s = sched(2)
    s.add_peer("liar", None, max_window=2)
    s.add_peer("seed", bits_of([0]), max_window=2)
    i = s.pick("liar", 0.0)
    s.lacks("liar", 0)
    if i == 0:
        s.failed(0, "liar")
    check_invariants(s)
    while (j := s.pick("liar", 0.0)) is not None:
        assert j != 0
    assert s.pick("seed", 0.0) == 0


def test_late_done_after_failure_is_harmless() -> None:
    s = sched(2)
    s.add_peer("a", None, max_window=2)
    i = s.pick("a", 0.0)
    assert i is not None
    s.failed(i, "a")
    s.done(i, "a")  # the data came anyway (a cancel crossed it): accept it
    check_invariants(s)
    assert not s.missing >> i & 1


@settings(max_examples=200, deadline=None, database=None)
@given(
    n=st.integers(1, 40),
    have=st.sets(st.integers(0, 39), max_size=10),
    peers=st.lists(st.sets(st.integers(0, 39), max_size=40), min_size=1, max_size=4),
    ops=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 39)), max_size=80),
    seed=st.integers(0, 1000),
)
def test_random_histories_keep_the_books_straight_and_finish(
    n: int,
    have: set[int],
    peers: list[set[int]],
    ops: list[tuple[int, int, int]],
    seed: int,
) -> None:
    """Whatever mix of picks, deliveries, failures, bans, departures and
    announcements (held or being fetched) happens, the invariants hold, and once a full peer joins
    the transfer completes with every missing chunk delivered."""
    s = sched(n, have={i for i in have if i < n}, seed=seed)
    start_missing = s.missing
    keys = [f"p{k}" for k in range(len(peers))]
    for key, held in zip(keys, peers, strict=True):
        s.add_peer(key, bits_of(i for i in held if i < n), max_window=3)
    delivered: set[int] = set()
    asked: dict[str, set[int]] = {k: set() for k in keys}
    now = 0.0
    for op, who, arg in ops:
        key = keys[who % len(keys)]
        now += 0.1
        if op == 0:
            i = s.pick(key, now)
            if i is not None:
                asked[key].add(i)
        elif op == 1 and asked[key]:
            i = min(asked[key])
            asked[key].discard(i)
            for loser in s.done(i, key):
                asked[loser].discard(i)
            delivered.add(i)
        elif op == 2 and asked[key]:
            i = max(asked[key])
            asked[key].discard(i)
            s.failed(i, key)
        elif op == 3:
            s.ban(key)
            asked[key].clear()
        elif op == 4:
            s.remove(key)
            asked[key].clear()
        elif op == 5 and arg < n:
            s.update_have(key, 1 << arg)
        elif op == 6:  # a fetching set: a window of chunks from ``arg`` (maybe empty)
            s.update_soon(key, bits_of(range(arg % 7, min(n, arg % 7 + arg % 5))))
        check_invariants(s)
    s.add_peer("full", None, max_window=4)
    for _ in range(4 * n + 4):
        if s.complete:
            break
        i = s.pick("full", now)
        if i is None:  # everything left is with other peers: they fetch and deliver
            for key in keys:
                while (j := s.pick(key, now)) is not None:
                    asked[key].add(j)
                for j in list(asked[key]):
                    for loser in s.done(j, key):
                        asked[loser].discard(j)
                    delivered.add(j)
                asked[key].clear()
            continue
        for loser in s.done(i, "full"):
            asked[loser].discard(i)
        delivered.add(i)
        check_invariants(s)
    assert s.complete
    assert bits_of(delivered) == start_missing


def test_endgame_does_not_copy_a_faster_peers_request() -> None:
    """A slow peer with room in its window leaves a fast peer's requests
    alone; the fast peer still duplicates the slow one's (tail insurance)."""
    s = sched(14)
    s.add_peer("fast", None, max_window=8)
    s.add_peer("slow", None, max_window=8)
    for key, first in (("fast", 9.5), ("slow", 8.0)):  # by t=10: 4 chunks/s and 1 chunk/s
        got = [s.pick(key, first) for _ in range(2)]
        for i in got:
            assert i is not None
            s.done(i, key)
    fast = [s.pick("fast", 10.0) for _ in range(8)]
    slow = [s.pick("slow", 10.0) for _ in range(2)]
    assert None not in fast + slow and s.unavailable() == 0 and not s._buckets[-1]
    s.done(fast[0], "fast")  # type: ignore[arg-type]
    s.done(slow[0], "slow")  # type: ignore[arg-type]
    assert s.window("slow", 10.0) > s._peers["slow"].inflight  # room, but nothing worth it
    assert s.pick("slow", 10.0) is None
    assert s.pick("fast", 10.0) == slow[1]  # the slow peer's request is doubled
    check_invariants(s)


def test_a_new_peer_gets_a_small_window_until_its_rate_is_known() -> None:
    """Pullers new to a shared seeder must not all queue deep blind requests."""
    s = sched(40, initial=INITIAL_WINDOW)
    s.add_peer("seeder", None, max_window=12)
    first = [s.pick("seeder", 0.0) for _ in range(INITIAL_WINDOW)]
    assert None not in first and s.pick("seeder", 0.0) is None
    for i in first:
        s.done(i, "seeder")  # type: ignore[arg-type]
    # 2 chunks in 0.1 s: 2 s of that rate is far beyond the cap, so the cap applies
    assert s.window("seeder", 0.1) == 12
    check_invariants(s)


def test_chunks_another_puller_is_fetching_are_left_to_it() -> None:
    """A fellow puller says what it is fetching: we ask the seeder for other
    chunks first, take them from the puller once it has them, and a chunk it
    stops fetching (without getting it) is ours to take again."""
    s = sched(8)
    s.add_peer("seeder", None, max_window=4)
    s.add_peer("puller", 0, max_window=4)
    s.update_soon("puller", bits_of([0, 1, 2, 3]))
    check_invariants(s)
    mine = {s.pick("seeder", 0.0) for _ in range(4)}
    assert mine == {4, 5, 6, 7}  # nobody else is fetching these
    s.update_have("puller", bits_of([0, 1]))  # it got two; still fetching 2 and 3
    check_invariants(s)
    assert s.pick("puller", 0.0) in {0, 1}
    s.update_soon("puller", 0)  # it gave up on 2 and 3: nobody but the seeder has them
    check_invariants(s)
    assert s.holds("puller") == bits_of([0, 1]) and s.unavailable() == 0
    s.remove("seeder")  # now 2 and 3 are out of reach, and so said
    assert s.unavailable() == bits_of([2, 3]) | bits_of(mine)
    check_invariants(s)


def test_a_seeder_new_to_us_is_asked_for_what_no_fellow_puller_holds() -> None:
    """Before the seeder's rate is known, its first requests go to chunks no
    fellow puller holds or fetches (at a thousand pullers, in simulation,
    those first requests made the seeder upload 16 copies)."""
    s = sched(8, initial=3)
    s.add_peer("seeder", None, max_window=8)
    s.add_peer("puller", bits_of(range(4)), max_window=8)
    s.update_soon("puller", bits_of([4, 5]))
    first = {s.pick("seeder", 0.0), s.pick("seeder", 0.0)}
    assert first == {6, 7}
    assert s.pick("seeder", 0.0) is None  # its window has room, but the rest is the puller's
    check_invariants(s)


def test_a_seeder_does_not_copy_what_a_lively_puller_is_giving() -> None:
    """The endgame of one puller: its last chunk is on its way from a fellow
    puller; the seeder (here the faster) makes no copy while that puller
    delivers, and one once it has gone quiet for PATIENCE."""
    s = sched(4)
    s.add_peer("seeder", None, max_window=4)
    s.add_peer("puller", bits_of([0]), max_window=4)
    last = s.pick("puller", 0.0)
    assert last == 0
    for i in [s.pick("seeder", 0.0), s.pick("seeder", 0.0), s.pick("seeder", 0.0)]:
        assert i is not None
        s.done(i, "seeder", 0.1)
    assert s.pick("seeder", 0.2) is None  # no copy: the swarm shares the seeder's upload
    assert s.pick("seeder", PATIENCE + 0.1) == last  # stuck: now it is copied
    check_invariants(s)


def test_a_stalled_puller_is_not_waited_for() -> None:
    """A full source leaves a fellow puller's chunks to it only while that
    puller delivers; after PATIENCE seconds of silence the full source takes
    them, and its stuck requests are copied in the endgame."""
    s = sched(10)
    s.add_peer("seeder", None, max_window=3)
    s.add_peer("puller", bits_of(range(5)), max_window=2)
    for key in ("seeder", "puller"):
        for i in [s.pick(key, 0.0), s.pick(key, 0.0)]:
            assert i is not None
            s.done(i, key, 0.5)
    stuck = [s.pick("puller", 1.0), s.pick("puller", 1.0)]  # never delivered
    assert None not in stuck
    taken = []
    while (i := s.pick("seeder", 1.0)) is not None:
        taken.append(i)
        s.done(i, "seeder", 1.0)
    assert s.missing & bits_of(range(5)) and not s.missing & bits_of(range(5, 10))
    assert s.pick("seeder", 0.5 + PATIENCE) is None  # the puller is still lively
    later = 1.0 + PATIENCE
    rest = []
    while (i := s.pick("seeder", later)) is not None:
        rest.append(i)
        s.done(i, "seeder", later)
    assert s.complete and set(stuck) <= set(rest)  # the stuck requests were copied
    check_invariants(s)


def test_a_source_is_asked_for_runs_of_consecutive_chunks_from_random_starts() -> None:
    """So the seeder reads its files, and the puller writes them, in runs
    (readahead and writeback work); each run starts at random (pullers
    spread) and is at most MAX_RUN long."""
    starts = set()
    for seed in range(8):
        s = sched(40, have={7}, seed=seed)
        s.add_peer("a", None, max_window=64)
        asked = []
        for _ in range(39):
            asked.append(s.pick("a", 0.0))
            assert s._peers["a"].run <= MAX_RUN  # a new random start at least that often
        assert s.pick("a", 0.0) is None
        picked = [i for i in asked if i is not None]
        assert sorted(picked) == [i for i in range(40) if i != 7]  # each asked once
        starts.add(picked[0])
        steps = [(y - x) % 40 for x, y in itertools.pairwise(picked)]
        assert sum(step == 1 for step in steps) >= len(steps) * 3 // 4  # runs, not single chunks
    assert len(starts) > 1


def test_a_run_does_not_follow_chunks_another_source_took() -> None:
    """Two sources whose runs meet do not interleave chunk by chunk."""
    s = sched(64, seed=5)
    s.add_peer("a", None, max_window=64)
    s.add_peer("b", None, max_window=64)
    a, b = [], []
    for _ in range(16):
        a.append(s.pick("a", 0.0))
        b.append(s.pick("b", 0.0))
    for run in (a, b):
        picked = [x for x in run if x is not None]
        assert len(picked) == len(run)
        steps = [(y - x) % 64 for x, y in itertools.pairwise(picked)]
        assert sum(step == 1 for step in steps) >= len(steps) // 2  # mostly consecutive
    assert not set(a) & set(b)
    check_invariants(s)


def test_a_relayed_peer_is_never_asked_for_what_a_direct_peer_holds() -> None:
    """A seeder reached through a relay gives only what the direct peer (a
    LAN puller) lacks, and no endgame copy of what the direct peer holds;
    when the direct peer vanishes, the relayed one gives the rest."""
    s = sched(12)
    s.add_peer("relayed", None, max_window=12, relayed=True)
    s.add_peer("lan", bits_of(range(6)), max_window=2)
    from_relay = []
    while (i := s.pick("relayed", 0.0)) is not None:
        from_relay.append(i)
    assert set(from_relay) == set(range(6, 12))  # only what the LAN peer lacks
    for i in from_relay:
        s.done(i, "relayed", 0.1)
    from_lan = [s.pick("lan", 0.2), s.pick("lan", 0.2)]  # its window: 2 asked
    assert None not in from_lan
    assert s.pick("relayed", 0.3) is None  # no copy of the LAN peer's requests either
    s.remove("lan")  # gone: now the relay is the only way
    rest = []
    while (i := s.pick("relayed", 0.4)) is not None:
        rest.append(i)
        s.done(i, "relayed", 0.5)
    assert s.complete and set(rest) == set(range(6))
    check_invariants(s)


def test_the_relay_waits_for_a_direct_peer_to_say_what_it_holds() -> None:
    """The relayed seeder's Have arrived first: it is asked for nothing
    until the direct peer, dialled already, answers with its Have; then
    only for what the direct peer lacks."""
    s = sched(6)
    s.expect("lan", until=DIRECT_GRACE)
    s.add_peer("relayed", None, max_window=6, relayed=True)
    assert s.pick("relayed", 0.0) is None
    assert s.pick("relayed", DIRECT_GRACE - 0.01) is None
    s.add_peer("lan", bits_of(range(4)), max_window=2)
    got = []
    while (i := s.pick("relayed", 0.5)) is not None:
        got.append(i)
    assert set(got) == {4, 5}
    check_invariants(s)


@pytest.mark.parametrize("how", ["silent", "vanished"])
def test_a_direct_peer_that_never_answers_holds_the_relay_back_only_briefly(how: str) -> None:
    s = sched(3)
    s.expect("lan", until=DIRECT_GRACE)
    s.add_peer("relayed", None, max_window=3, relayed=True)
    when = DIRECT_GRACE  # silent: the grace ran out
    if how == "vanished":
        s.remove("lan")  # its connection broke before its Have
        when = 0.0
    assert {s.pick("relayed", when) for _ in range(3)} == {0, 1, 2}
    check_invariants(s)


def test_expecting_a_direct_peer_does_not_hold_back_direct_ones() -> None:
    s = sched(2)
    s.expect("lan", until=DIRECT_GRACE)
    s.add_peer("other-lan", None, max_window=2)
    assert s.pick("other-lan", 0.0) is not None


def test_a_stalled_direct_peer_does_not_hold_back_the_relay() -> None:
    s = sched(4)
    s.add_peer("relayed", None, max_window=4, relayed=True)
    s.add_peer("lan", bits_of(range(4)), max_window=1)
    asked = s.pick("lan", 0.0)
    assert asked is not None and s.pick("relayed", 0.0) is None
    late = PATIENCE + 1.0  # the LAN peer delivered nothing since it was asked
    got = []
    while (i := s.pick("relayed", late)) is not None:
        got.append(i)
        s.done(i, "relayed", late)
    assert s.complete and asked in got
    check_invariants(s)


def test_a_direct_seeder_does_not_leave_chunks_to_a_relayed_puller() -> None:
    """The relayed puller is not asked for what the direct seeder holds, so
    the seeder must not leave those chunks to it either: no waiting out
    PATIENCE with nobody asked."""
    s = sched(8)
    s.add_peer("seeder", None, max_window=8)
    s.add_peer("relayed", bits_of(range(4)), max_window=8, relayed=True)
    for i in [s.pick("seeder", 0.0), s.pick("seeder", 0.0)]:  # its rate becomes known
        assert i is not None
        s.done(i, "seeder", 0.1)
    got = []
    while (i := s.pick("seeder", 0.2)) is not None:
        got.append(i)
        s.done(i, "seeder", 0.2)
    assert s.complete and s.pick("relayed", 0.3) is None
    check_invariants(s)


def test_a_seeder_is_asked_first_for_what_it_has_given_nobody() -> None:
    """What a seeder says it gave other pullers is out in the swarm: its
    upload goes to the rest first (super-seeding from the puller's side)."""
    s = sched(8, initial=8)
    s.add_peer("seeder", None, max_window=8)
    s.update_given("seeder", bits_of(range(6)))
    asked = {s.pick("seeder", 0.0), s.pick("seeder", 0.0)}
    assert asked == {6, 7}
    check_invariants(s)


def test_what_a_seeder_gave_others_waits_while_fellow_pullers_have_work_for_us() -> None:
    """A chunk the seeder gave someone else, held by no fellow we see, is not
    asked of the seeder while a fellow puller holds anything we still need:
    our fellows will get it from theirs. Once they hold nothing we lack, the
    seeder gives it (no pull waits on a chunk nobody will bring)."""
    s = sched(6, initial=6)
    s.add_peer("seeder", None, max_window=6)
    s.add_peer("puller", bits_of([0, 1]), max_window=6)
    s.update_given("seeder", bits_of(range(6)))
    assert s.pick("seeder", 0.0) is None  # 2..5 were given to others; the puller has 0 and 1
    assert {s.pick("puller", 0.0), s.pick("puller", 0.0)} == {0, 1}
    assert s.pick("seeder", 0.0) is None  # 0 and 1 are asked of the puller, not yet here
    s.done(0, "puller", 0.1)
    s.done(1, "puller", 0.2)
    assert s.pick("seeder", 0.3) in {2, 3, 4, 5}  # fellows hold nothing we lack now
    check_invariants(s)


def test_a_lone_puller_is_not_held_back_by_what_the_seeder_gave_others() -> None:
    """No fellow puller: what the seeder gave others changes only the order."""
    s = sched(4, initial=4)
    s.add_peer("seeder", None, max_window=4)
    s.update_given("seeder", bits_of([0, 1, 2]))
    asked = [s.pick("seeder", 0.0) for _ in range(4)]
    assert asked[0] == 3 and sorted(asked) == [0, 1, 2, 3]
    check_invariants(s)


def test_only_a_full_source_says_what_it_gave() -> None:
    """A partial source's ``given`` means nothing: it is asked as before."""
    s = sched(4, initial=4)
    s.add_peer("puller", bits_of([0, 1]), max_window=4)
    s.update_given("puller", bits_of([0]))
    s.update_given("stranger", bits_of([1]))  # not a peer: ignored
    assert {s.pick("puller", 0.0), s.pick("puller", 0.0)} == {0, 1}
    check_invariants(s)


def test_a_seeder_with_fellows_still_gives_what_nobody_was_given() -> None:
    """Fellows hold 0-3 and were given them by the seeder: the seeder is still
    asked for 4-7 (a small checkpoint's bitmaps are Python's cached small
    ints: an identity test once took the first pass for the last and asked
    nothing)."""
    s = sched(8, initial=8)
    s.add_peer("seeder", None, max_window=8)
    s.add_peer("puller", bits_of(range(4)), max_window=8)
    s.update_given("seeder", bits_of(range(2)))
    asked = {s.pick("seeder", 0.0) for _ in range(4)}
    assert asked == {4, 5, 6, 7}
    check_invariants(s)
