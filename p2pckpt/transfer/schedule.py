"""Which chunk to ask which peer for next: the swarm's scheduler.

Pure: no I/O, no trio, no clock of its own (callers pass ``now``), so the
pull engine drives it and tests drive it the same way, without sockets.

Policy (issue 5, DESIGN.md "transfer engine"):

- **Rarest first.** Among missing chunks nobody is fetching, a peer gets one
  the fewest peers have. Ties: runs of up to MAX_RUN consecutive chunks
  per peer, each from a random start, so pullers fetching from the same
  seeder take different chunks and can trade them, while each source
  reads its files, and the puller writes them, in runs: the disk's
  readahead and writeback work for sequential runs, not for a random
  chunk each time. A run ends early at a chunk someone else took.
- **Windows follow speed.** A peer may have about WINDOW_SECONDS of its
  measured rate in flight (at least 1, at most its ``max_window``; until
  the rate is known, INITIAL_WINDOW): a slow peer never hoards chunks a
  fast one could fetch, and pullers new to a shared seeder do not all queue
  deep blind requests at it.
- **Seeders give what nobody else can.** A full source is not asked for a
  chunk a fellow puller (a partial source) holds or is fetching, unless it
  is clearly faster than that puller: the seeder's uplink is what the whole
  swarm shares. Chunks other pullers are fetching also count toward
  availability (``update_soon``), so pullers spread over what is rare.
  What a seeder says it gave the pullers connected to it (``update_given``)
  is out in the swarm: asked of it last, and only once fellow pullers hold
  nothing this pull still needs. A puller sees only its neighbours; the
  seeder sees every puller, so this is super-seeding with the seeder's
  knowledge and the puller's choice (1,000 pullers in simulation: the
  seeder's upload fell from 5 copies to about one).
- **The cheap path first.** A peer reached through a relay is never asked
  for a chunk a lively direct peer holds (not even as an endgame copy):
  relayed bytes cross the internet twice and the relay caps them. Nor,
  for DIRECT_GRACE after the pull starts, for anything while a direct peer
  it was told to ``expect`` has not said what it holds: whichever Have
  arrives first must not decide the route.
- **Endgame.** When no unrequested chunk is left that a peer has, it
  duplicates the oldest request held by another peer (at most
  ENDGAME_COPIES copies of a chunk at once), unless that peer is measurably
  faster: a slow seeder must not spend its scarce upload on copies a fast
  peer is about to deliver. Nor does a full source copy what a lively
  fellow puller is giving: every puller's last few chunks are an endgame,
  and in simulation at 100 pullers those copies were most of what the
  seeder uploaded. The first copy to arrive wins; ``done`` names
  the peers whose copies should be cancelled.
- **Faults.** ``ban`` drops a peer for this transfer (it sent a chunk that
  failed verification); ``remove`` forgets one that vanished. Either way
  its requests go back to the pool, to be fetched elsewhere.

Chunk sets are Python ints used as bitmaps (bit i = chunk i): the pool is
kept in buckets by availability, and a peer joining or announcing new
chunks moves whole bitmaps between buckets, not chunk after chunk.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

from p2pckpt.wire.bitfield import bits_of

WINDOW_SECONDS: Final = 2.0
ENDGAME_COPIES: Final = 2
RATE_AFTER_CHUNKS: Final = 2  # chunks a peer must deliver before its rate counts
# Until a peer's rate is known it gets this many requests: a deep blind window at
# a shared seeder is how pullers end up fetching the same chunks from it.
INITIAL_WINDOW: Final = 2
MAX_RUN: Final = 8  # consecutive chunks asked of one source before a new random start
FULL_SOURCE_EDGE: Final = 2.0  # how much faster a full source must be to take a puller's chunks
# A peer that delivered nothing for this long is not waited for: a full source
# takes the chunks it holds, and endgame copies the requests it sits on.
PATIENCE: Final = 5.0
# How long relayed peers wait for the direct peers a pull dialled to say what
# they hold (their connections are up already: one round trip is all it takes).
DIRECT_GRACE: Final = 2.0

Key = Hashable


@dataclass
class _Peer:
    bits: int
    max_window: int
    soon: int = 0  # chunks it is fetching itself (never overlaps bits)
    inflight: int = 0
    delivered: int = 0  # chunks
    received: int = 0  # bytes
    first_request: float | None = None
    last_delivery: float | None = None
    relayed: bool = False  # reached through a relay: the expensive path
    next_pick: int | None = None  # where its run of consecutive chunks goes on
    run: int = 0  # chunks in its current run
    given: int = 0  # a full source's chunks already given to some puller (out in the swarm)

    def rate(self, now: float) -> float | None:
        """Bytes/s since the first request, once enough chunks arrived to say."""
        if self.delivered < RATE_AFTER_CHUNKS or self.first_request is None:
            return None
        return self.received / max(now - self.first_request, 1e-3)

    def lively(self, now: float) -> bool:
        """Delivered (or was first asked) within PATIENCE seconds: worth waiting for."""
        last = self.last_delivery if self.last_delivery is not None else self.first_request
        return last is None or now - last <= PATIENCE

    def hopeful_rate(self, now: float, chunk: float) -> float | None:
        """Bytes/s since the first request, as if one more chunk had just
        arrived: generous to a peer that just started, falling to zero for
        one that delivers nothing. None before it was asked for anything."""
        if self.first_request is None:
            return None
        return (self.received + chunk) / max(now - self.first_request, 1e-3)


@dataclass
class Scheduler:
    """The state of one transfer: what is missing, requested, and where."""

    sizes: list[int]
    have: set[int] = field(default_factory=set)  # verified locally already
    rng: random.Random = field(default_factory=random.Random)
    initial_window: int = INITIAL_WINDOW

    def __post_init__(self) -> None:
        self.count = len(self.sizes)
        self._all = (1 << self.count) - 1
        self.missing = self._all & ~bits_of(self.have)
        self._mean = sum(self.sizes) / self.count if self.count else 1.0
        self._peers: dict[Key, _Peer] = {}
        self._banned: set[Key] = set()
        self._requests: dict[int, dict[Key, float]] = {}  # chunk -> {peer: when asked}
        self._buckets: list[int] = [self.missing]  # pool chunks by how many peers have them
        self._expected: dict[Key, float] = {}  # direct peers yet to say what they hold: until when

    # -- peers -----------------------------------------------------------------

    @property
    def peers(self) -> list[Key]:
        return list(self._peers)

    def add_peer(self, key: Key, bits: int | None, max_window: int, relayed: bool = False) -> None:
        """A peer holding ``bits`` (None: every chunk), reached directly or
        through a relay (``relayed``). Banned peers stay out."""
        self._expected.pop(key, None)
        if key in self._banned or key in self._peers:
            return
        self._peers[key] = _Peer(0, max(1, max_window), relayed=relayed)
        self.update_have(key, self._all if bits is None else bits)

    def expect(self, key: Key, until: float) -> None:
        """A direct peer is connected but has not said what it holds: until
        ``until`` (or its ``add_peer``, or ``remove``), relayed peers are asked
        for nothing, or the relay would carry chunks the LAN peer holds."""
        if key not in self._peers and key not in self._banned:
            self._expected[key] = until

    def update_have(self, key: Key, bits: int) -> None:
        """The peer now also holds ``bits`` (what it held before stays)."""
        peer = self._peers.get(key)
        if peer is None:
            return
        new = bits & self._all & ~peer.bits
        peer.bits |= new
        fresh = new & ~peer.soon  # chunks it was fetching already count
        peer.soon &= ~new
        if fresh:
            self._shift(fresh, +1)

    def update_soon(self, key: Key, fetching: int) -> None:
        """The peer (itself a puller) is now fetching ``fetching``. Those count
        toward a chunk's availability, so others prefer chunks nobody is
        fetching yet: pullers of one seeder stop asking it for the same ones."""
        peer = self._peers.get(key)
        if peer is None:
            return
        fetching &= self._all & ~peer.bits
        gone, new = peer.soon & ~fetching, fetching & ~peer.soon
        peer.soon = fetching
        if gone:
            self._shift(gone, -1)
        if new:
            self._shift(new, +1)

    def update_given(self, key: Key, given: int) -> None:
        """A full source (a seeder) says it has already given ``given`` to
        some puller: those are out in the swarm, and fellow pullers will
        have them to trade. It is asked for them only when no fellow puller
        holds anything this pull still needs; what it has given nobody yet
        comes first. This is what keeps a seeder's upload near one copy
        when pullers each see only their neighbours."""
        peer = self._peers.get(key)
        if peer is not None:
            peer.given |= given & self._all

    def lacks(self, key: Key, index: int) -> None:
        """The peer said it does not have ``index`` after all."""
        peer = self._peers.get(key)
        if peer is not None and peer.bits >> index & 1:
            peer.bits &= ~(1 << index)
            self._shift(1 << index, -1)

    def remove(self, key: Key) -> list[int]:
        """Forget a peer (it vanished); returns the chunks it was fetching."""
        self._expected.pop(key, None)
        peer = self._peers.pop(key, None)
        if peer is None:
            return []
        self._shift(peer.bits | peer.soon, -1)
        dropped = [i for i, holders in self._requests.items() if key in holders]
        for i in dropped:
            self._unrequest(i, key, peer)
        return dropped

    def ban(self, key: Key) -> list[int]:
        """Drop a peer for the rest of this transfer (it sent a bad chunk)."""
        self._banned.add(key)
        return self.remove(key)

    @property
    def banned(self) -> set[Key]:
        return set(self._banned)

    def held_elsewhere(self, index: int, key: Key, now: float) -> bool:
        """Some lively peer other than ``key`` holds chunk ``index``."""
        return any(
            k != key and p.bits >> index & 1 and p.lively(now) for k, p in self._peers.items()
        )

    def holds(self, key: Key) -> int:
        peer = self._peers.get(key)
        return peer.bits if peer is not None else 0

    # -- requests --------------------------------------------------------------

    def window(self, key: Key, now: float) -> int:
        peer = self._peers[key]
        rate = peer.rate(now)
        if rate is None:
            return min(peer.max_window, self.initial_window)
        return max(1, min(peer.max_window, math.ceil(rate * WINDOW_SECONDS / self._mean)))

    def pick(self, key: Key, now: float) -> int | None:
        """The next chunk to request from ``key``, or None (window full, or it
        has nothing we still need)."""
        peer = self._peers.get(key)
        if peer is None or peer.inflight >= self.window(key, now):
            return None
        if peer.relayed and any(until > now for until in self._expected.values()):
            return None  # a direct peer may hold it: wait for its Have
        full = peer.bits == self._all
        held, fetching = self._left_to_pullers(key, now) if full else (0, 0)
        if peer.relayed:  # never through a relay what a direct peer can give
            held |= self._direct(now)
        given = peer.given if full else 0
        # First what nobody else can give; then, once only chunks fellow pullers
        # are still fetching are left, those too (they may never get them);
        # last what a seeder has given others already.
        passes = [held | fetching | given, held | given] if fetching else [held | given]
        if given:
            passes.append(held)
        for n, spare in enumerate(passes):
            if given and n == len(passes) - 1 and held & self.missing:
                return None  # fellows still bring chunks we need: what was given waits
            for level in range(1, len(self._buckets)):
                offer = self._buckets[level] & peer.bits & ~spare
                if offer:
                    index = self._run_bit(offer, peer)
                    self._buckets[level] &= ~(1 << index)
                    return self._request(index, key, peer, now)
            if held & self._pool():  # pullers that hold them will give them
                return None
        return self._endgame(key, peer, now)

    def _left_to_pullers(self, key: Key, now: float) -> tuple[int, int]:
        """Chunks a full source should leave to the partial sources (fellow
        pullers) that hold or are fetching them (as two bitmaps): a seeder's
        upload is what the whole swarm shares, so it goes to chunks nobody
        else can give. Not so for a puller the full source is clearly
        (FULL_SOURCE_EDGE x) faster than, once its own rate is known (before,
        it is not: at a thousand pullers, every puller's first requests to
        the seeder were for what its neighbours held)."""
        mine = self._peers[key].rate(now)
        held = fetching = 0
        relayed = self._peers[key].relayed
        for other_key, other in self._peers.items():
            if other_key == key or other.bits == self._all:
                continue
            if other.relayed and not relayed:
                continue  # it is not asked for what we hold: no leaving chunks to it
            theirs = other.hopeful_rate(now, self._mean)
            if other.lively(now) and (
                theirs is None or mine is None or mine < FULL_SOURCE_EDGE * theirs
            ):
                held |= other.bits
                fetching |= other.soon
        return held, fetching

    def _pool(self) -> int:
        pool = 0
        for bucket in self._buckets:
            pool |= bucket
        return pool

    def _direct(self, now: float) -> int:
        """What the lively peers reached without a relay hold."""
        held = 0
        for other in self._peers.values():
            if not other.relayed and other.lively(now):
                held |= other.bits
        return held

    def _endgame(self, key: Key, peer: _Peer, now: float) -> int | None:
        mine = peer.rate(now)
        direct = self._direct(now) if peer.relayed else 0
        full = peer.bits == self._all
        best: tuple[float, int] | None = None
        for index, holders in self._requests.items():
            if key in holders or len(holders) >= ENDGAME_COPIES or not peer.bits >> index & 1:
                continue
            if direct >> index & 1:
                continue  # a direct peer has it: no copy through the relay
            if full and any(self._pulling(h, now) for h in holders):
                continue  # a fellow puller is giving it: the seeder's upload is the swarm's
            if mine is not None and any(self._faster(h, mine, now) for h in holders):
                continue  # its holder should beat us to it: a copy would only waste upload
            asked = min(holders.values())
            if best is None or asked < best[0]:
                best = (asked, index)
        return None if best is None else self._request(best[1], key, peer, now)

    def _pulling(self, key: Key, now: float) -> bool:
        """``key`` is a lively partial source: a fellow puller."""
        holder = self._peers.get(key)
        return holder is not None and holder.bits != self._all and holder.lively(now)

    def _faster(self, key: Key, rate: float, now: float) -> bool:
        holder = self._peers.get(key)
        if holder is None or not holder.lively(now):
            return False
        theirs = holder.rate(now)
        return theirs is not None and theirs > rate

    def _request(self, index: int, key: Key, peer: _Peer, now: float) -> int:
        self._requests.setdefault(index, {})[key] = now
        peer.inflight += 1
        if peer.first_request is None:
            peer.first_request = now
        return index

    def done(self, index: int, key: Key, now: float | None = None) -> list[Key]:
        """``index`` arrived from ``key`` and verified (at ``now``, if given).
        Returns the other peers still fetching it (their copies are to be
        cancelled)."""
        holders = self._requests.pop(index, {})
        self.missing &= ~(1 << index)
        if not holders:  # arrived after its request was given up: out of the pool
            self._buckets = [b & ~(1 << index) for b in self._buckets]
        peer = self._peers.get(key)
        if peer is not None and key in holders:
            peer.inflight -= 1
            peer.delivered += 1
            peer.received += self.sizes[index]
            if now is not None:
                peer.last_delivery = now
        losers = [k for k in holders if k != key]
        for k in losers:
            other = self._peers.get(k)
            if other is not None:
                other.inflight -= 1
        return losers

    def failed(self, index: int, key: Key) -> None:
        """A request to ``key`` ended without the chunk (error, cancel)."""
        peer = self._peers.get(key)
        if peer is not None and key in self._requests.get(index, {}):
            self._unrequest(index, key, peer)

    def _unrequest(self, index: int, key: Key, peer: _Peer) -> None:
        holders = self._requests.get(index, {})
        holders.pop(key, None)
        peer.inflight -= 1
        if not holders:
            self._requests.pop(index, None)
            if self.missing >> index & 1:  # back to the pool, at its availability
                level = sum(1 for p in self._peers.values() if (p.bits | p.soon) >> index & 1)
                self._buckets += [0] * (level + 1 - len(self._buckets))
                self._buckets[level] |= 1 << index

    # -- state -----------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def outstanding(self) -> int:
        return len(self._requests)

    def requested(self) -> int:
        """The chunks being fetched right now (what a ``Have`` calls fetching)."""
        return bits_of(self._requests)

    def unavailable(self) -> int:
        """Missing chunks no peer has and nobody is fetching from a peer (a
        chunk another puller is fetching is not in reach until it has it)."""
        held = 0
        for peer in self._peers.values():
            held |= peer.bits
        return self._pool() & ~held

    # -- internals -------------------------------------------------------------

    def _shift(self, bits: int, step: int) -> None:
        """Pool chunks in ``bits`` are now held by one more (step +1) or one
        fewer (-1) peer: move them one bucket up or down."""
        if step > 0:
            self._buckets.append(0)
            levels = range(len(self._buckets) - 2, -1, -1)
        else:
            levels = range(1, len(self._buckets))
        for level in levels:
            moving = self._buckets[level] & bits
            if moving:
                self._buckets[level] &= ~moving
                self._buckets[level + step] |= moving
        while len(self._buckets) > 1 and not self._buckets[-1]:
            self._buckets.pop()

    def _run_bit(self, bits: int, peer: _Peer) -> int:
        """A set bit of ``bits``: the chunk right after ``peer``'s last one
        while it is free and the run is shorter than MAX_RUN; otherwise the
        first free one at or after a random position (wrapping). A run that
        reached chunks someone else took does not follow them: two runs
        chasing each other would interleave chunk by chunk, and pullers
        would fetch the same chunks from a seeder instead of trading them."""
        start = peer.next_pick
        if start is not None and peer.run < MAX_RUN and bits >> start & 1:
            peer.run += 1
            index = start
        else:
            peer.run = 1
            index = self._first_bit_from(bits, self.rng.randrange(self.count))
        peer.next_pick = (index + 1) % self.count
        return index

    def _first_bit_from(self, bits: int, start: int) -> int:
        above = bits >> start
        if above:
            return start + (above & -above).bit_length() - 1
        return (bits & -bits).bit_length() - 1
