#!/usr/bin/env python3
"""Swarm simulation: the project's real scheduler, a simulated network, a virtual clock.

Every puller runs ``p2pckpt.transfer.schedule.Scheduler`` (the pure core the
pull engine drives, imported, not copied) with the limits the engine puts
around it: ``PIPELINE`` requests asked per connection, the pull's ``Room``
(``ROOM_BYTES``) across all its connections, a source's window of
``PIPELINE * streams`` requests, and what fellow pullers hold and fetch
learnt by polling their Have every ``HAVE_POLL`` seconds (the seeder's
says which chunks it was asked for, as a real seeder's does). The network is a
fluid model stepped every ``--dt`` seconds: a connection sends the chunk at
the head of its queue, one at a time and in order (like a seeder's
connection), after a round trip; the transfers crossing a node's uplink or
downlink share it max-min fairly by weight, as TCP flows share a
bottleneck: one held back at its other end leaves its share to the rest
(``Sim._rates``; each connection's weight is drawn from 0.8-1.2: TCP is
not exactly fair, and equal shares would finish chunks in lockstep).
Pullers poll out of step with each other.

The fleet: one seeder (``--seeder-rate``), ``--nodes`` pullers whose up and
down rates are drawn from ``--mix`` (default 10% at 1 Gbit/s, the rest at
100 Mbit/s), joining uniformly over ``--join`` seconds, each dialling the
seeder and up to ``--neighbours`` earlier nodes (which dial back); ``--leave``
of them (default 5%) leave mid-way. Output, per fleet size: each node's
completion time against its ideal (checkpoint size over its own down rate,
and no less than the seeder needs to send one copy), as median / p90 / p99 /
max ratios; the same against its fair share (its down rate capped at the
fleet's total upload over the fleet size, see ``Sim.report``); and the
seeder's upload as a multiple of the checkpoint.

Target (issue 17): at 1,000 nodes the median node within 1.3x of its ideal,
p99 within 2x, the seeder uploading at most 1.5x. A MISS does not change the
exit status. Deterministic for a given ``--seed``.

Usage::

    python scripts/sim_swarm.py                          # 100 and 1,000 nodes, 512 MiB
    python scripts/sim_swarm.py --nodes 100 --size 256MiB --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pckpt.manifest.chunker import CHUNK_SIZE
from p2pckpt.transfer.buffers import ROOM_BYTES
from p2pckpt.transfer.requests import HAVE_POLL, PIPELINE
from p2pckpt.transfer.schedule import Scheduler

MBIT = 1e6 / 8
TARGETS = {"median": 1.3, "p99": 2.0, "seeder": 1.5}
FILL_ROUNDS = 4  # water-filling rounds per clock step (see Sim._rates)


@dataclass(eq=False)
class Conn:
    """One direction of a link: ``src`` sends the chunks ``dst`` asked for, in order."""

    src: Node
    dst: Node
    rtt: float
    share: float  # its weight against the other transfers of a link (TCP is not exactly fair)
    queue: deque[tuple[int, float]] = field(default_factory=deque)  # (chunk, asked at)
    left: float = 0.0  # bytes of the head chunk still to send (0: not started)


@dataclass(eq=False)
class Node:
    key: int
    up: float  # bytes/s
    down: float
    join: float
    leave: float | None = None
    sched: Scheduler | None = None  # None: the seeder (holds everything)
    have: int = 0
    fetching: int = 0  # chunks it asked for and has not got
    out: dict[int, Conn] = field(default_factory=dict)  # by dst key
    into: dict[int, Conn] = field(default_factory=dict)  # by src key
    asked: int = 0  # chunks asked and not yet delivered (the Room)
    uploaded: float = 0.0
    done_at: float | None = None
    gone: bool = False
    next_poll: float = 0.0
    given: int = 0  # the seeder: chunks some puller asked it for (its Have says so)


class Sim:
    def __init__(self, args: argparse.Namespace, nodes: int) -> None:
        self.rng = random.Random(args.seed * 7919 + nodes)
        self.size = args.size
        self.chunks = max(1, -(-args.size // CHUNK_SIZE))
        self.sizes = [CHUNK_SIZE] * (self.chunks - 1) + [args.size - CHUNK_SIZE * (self.chunks - 1)]
        self.all = (1 << self.chunks) - 1
        self.room = max(1, ROOM_BYTES // CHUNK_SIZE)
        self.window = PIPELINE * args.streams
        self.dt = args.dt
        self.rtt = args.rtt
        self.neighbours = args.neighbours
        seeder_rate = args.seeder_rate * MBIT
        self.seeder = Node(-1, seeder_rate, seeder_rate, 0.0, have=self.all)
        self.nodes: list[Node] = []
        for key in range(nodes):
            fast = self.rng.random() < args.fast_share
            rate = (args.fast_rate if fast else args.slow_rate) * MBIT
            node = Node(key, rate, rate, self.rng.uniform(0.0, args.join))
            node.next_poll = node.join + self.rng.uniform(0.0, HAVE_POLL)  # polls out of step
            self.nodes.append(node)
        for node in self.rng.sample(self.nodes, round(nodes * args.leave)):
            # leaves while downloading: after 20-80% of its own ideal time
            node.leave = node.join + self.rng.uniform(0.2, 0.8) * self.size / node.down
        self.nodes.sort(key=lambda n: n.join)
        self.by_key = {n.key: n for n in [self.seeder, *self.nodes]}
        # link capacities by key + 1 (the seeder, key -1, at 0)
        self._up = np.array([self.by_key[k].up for k in range(-1, nodes)], float)
        self._down = np.array([self.by_key[k].down for k in range(-1, nodes)], float)
        self.active: list[Node] = []

    # -- the fleet ---------------------------------------------------------------------

    def _connect(self, a: Node, b: Node) -> None:
        """A connection each way between ``a`` and ``b``."""
        for src, dst in ((a, b), (b, a)):
            if dst.key not in src.out:
                rtt = self.rtt * self.rng.uniform(0.5, 1.5)
                conn = Conn(src, dst, rtt, self.rng.uniform(0.8, 1.2))
                src.out[dst.key] = conn
                dst.into[src.key] = conn

    def _join(self, node: Node) -> None:
        node.sched = Scheduler(self.sizes, set(), random.Random(self.rng.random()))
        self._connect(node, self.seeder)
        others = [n for n in self.active if not n.gone and len(n.into) < 2 * self.neighbours]
        for other in self.rng.sample(others, min(self.neighbours, len(others))):
            self._connect(node, other)
        self.active.append(node)

    def _leave(self, node: Node) -> None:
        node.gone = True
        for conn in list(node.out.values()):  # what it was sending is lost
            self._drop(conn)
        for conn in list(node.into.values()):
            self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        src, dst = conn.src, conn.dst
        src.out.pop(dst.key, None)
        dst.into.pop(src.key, None)
        if dst.sched is not None and not dst.gone:
            dst.asked -= len(conn.queue)
            dst.sched.remove(src.key)
            dst.fetching = dst.sched.requested()

    # -- what pullers know and ask -----------------------------------------------------

    def _poll(self, node: Node, now: float) -> None:
        """Node's Have answers from every peer it is connected to."""
        sched = node.sched
        assert sched is not None
        for key in node.into:
            peer = self.by_key[key]
            if key not in sched.peers:
                bits = None if peer.have == self.all else peer.have
                sched.add_peer(key, bits, max_window=self.window)
            else:
                sched.update_have(key, peer.have)
            sched.update_soon(key, peer.fetching & ~peer.have)
            if peer.sched is None:
                sched.update_given(key, peer.given)
        node.next_poll = now + HAVE_POLL

    def _ask(self, node: Node, now: float) -> None:
        sched = node.sched
        assert sched is not None
        # Its connections ask in no fixed order: in the engine each waits to
        # be woken, and trio runs the woken in an order of its own. (A fixed
        # order gave the pull's Room to the same first few sources at every
        # step: fast sources sat idle and the seeder was asked 1.3x as much.)
        conns = list(node.into.items())
        self.rng.shuffle(conns)
        progress = True
        while progress and node.asked < self.room:
            progress = False
            for key, conn in conns:
                if node.asked >= self.room:
                    break
                if len(conn.queue) >= PIPELINE or key not in sched.peers:
                    continue
                index = sched.pick(key, now)
                if index is None:
                    continue
                conn.queue.append((index, now))
                conn.src.given |= 1 << index
                node.asked += 1
                node.fetching |= 1 << index
                progress = True

    def _deliver(self, conn: Conn, index: int, now: float) -> None:
        dst = conn.dst
        assert dst.sched is not None
        dst.asked -= 1
        if dst.have >> index & 1:
            return  # a late duplicate
        dst.have |= 1 << index
        for loser in dst.sched.done(index, conn.src.key, now):
            other = dst.into.get(loser) if isinstance(loser, int) else None  # cancel its copy
            if other is None:
                continue
            for n, (i, _) in enumerate(other.queue):
                if i == index:
                    del other.queue[n]
                    if n == 0:
                        other.left = 0.0
                    dst.asked -= 1
                    break
        dst.fetching = dst.sched.requested()
        if dst.have == self.all:
            dst.done_at = now

    # -- the clock ---------------------------------------------------------------------

    def run(self, limit: float) -> float:
        now, waiting = 0.0, deque(self.nodes)
        leaving = sorted((n for n in self.nodes if n.leave is not None), key=lambda n: n.leave or 0)
        while now < limit:
            while waiting and waiting[0].join <= now:
                self._join(waiting.popleft())
            while leaving and (leaving[0].leave or 0) <= now:
                gone = leaving.pop(0)
                if gone.done_at is None and gone.sched is not None:
                    self._leave(gone)
            busy = [n for n in self.active if not n.gone and n.done_at is None]
            if not busy and not waiting:
                break
            for node in busy:
                if now >= node.next_poll:
                    self._poll(node, now)
                self._ask(node, now)
            self._step(now)
            now += self.dt
        return now

    def _step(self, now: float) -> None:
        """Move every connection's head chunk on by one ``dt``."""
        sending: list[Conn] = []
        for node in self.active:
            if node.gone or node.done_at is not None:
                continue
            for conn in node.into.values():
                if conn.queue and now >= conn.queue[0][1] + conn.rtt:
                    sending.append(conn)
        if not sending:
            return
        heads = [conn.queue[0][0] for conn in sending]
        for conn, index, rate in zip(sending, heads, self._rates(sending), strict=True):
            if not conn.queue or conn.queue[0][0] != index:
                continue  # cancelled this step: another copy arrived first
            if conn.left <= 0:
                conn.left = self.sizes[index]
            step = min(conn.left, float(rate) * self.dt)
            conn.left -= step
            conn.src.uploaded += step
            if conn.left <= 0:
                conn.queue.popleft()
                self._deliver(conn, index, now + self.dt)

    def _rates(self, sending: list[Conn]) -> np.ndarray:
        """Each transfer's rate: the links' capacity shared max-min fairly, by
        weight (TCP-like: a transfer held back at one end leaves the other
        end's capacity to the rest). Water-filling in FILL_ROUNDS rounds:
        each round every transfer not yet at a full link gains its weight
        times the lower of its two links' remaining capacity per unit of
        weight. Never more than a link's capacity; the first round alone is
        plain proportional sharing, which left fast uplinks 90% idle."""
        count, n = len(sending), len(self._up)
        src = np.fromiter((c.src.key + 1 for c in sending), np.intp, count)
        dst = np.fromiter((c.dst.key + 1 for c in sending), np.intp, count)
        weight = np.fromiter((c.share for c in sending), float, count)
        up_left, down_left = self._up.copy(), self._down.copy()
        rate = np.zeros(count)
        live = np.ones(count, bool)
        with np.errstate(divide="ignore", invalid="ignore"):  # idle links: inf; 0 x inf: nan
            for _ in range(FILL_ROUNDS):
                w = np.where(live, weight, 0.0)
                per_up = up_left / np.bincount(src, w, n)
                per_down = down_left / np.bincount(dst, w, n)
                gain = np.nan_to_num(w * np.minimum(per_up[src], per_down[dst]), posinf=0.0)
                rate += gain
                up_left = np.maximum(up_left - np.bincount(src, gain, n), 0.0)
                down_left = np.maximum(down_left - np.bincount(dst, gain, n), 0.0)
                live &= (up_left[src] > 1e-6 * self._up[src]) & (
                    down_left[dst] > 1e-6 * self._down[dst]
                )
                if not live.any():
                    break
        return rate

    # -- the report --------------------------------------------------------------------

    def report(self, wall: float, ended: float) -> dict[str, float]:
        """Completion against two ideals per node: its own link (the checkpoint
        over its down rate, no less than the seeder takes to send one copy),
        and its fair share (the same, with its down rate capped at the
        fleet's whole upload, seeder included, split evenly over the
        fleet: the per-node form of the fluid bound on a swarm's time,
        N x size / total upload). A 1 Gbit/s node among 100 Mbit/s ones
        cannot reach the first: nobody can send to it that fast. The second
        bounds the fleet, not each node: an early node, with the seeder to
        itself, can beat its share."""
        seeder_floor = self.size / self.seeder.up
        fair = (self.seeder.up + sum(n.up for n in self.nodes)) / max(1, len(self.nodes))
        ratios, shares, unfinished = [], [], 0
        for node in self.nodes:
            if node.leave is not None and (node.done_at is None or node.done_at > node.leave):
                continue  # left mid-way: not judged
            if node.done_at is None:
                unfinished += 1
                continue
            took = node.done_at - node.join
            ratios.append(took / max(self.size / node.down, seeder_floor))
            shares.append(took / max(self.size / min(node.down, fair), seeder_floor))
        ratios.sort()
        shares.sort()

        def pct(values: list[float], p: float) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")

        return {
            "nodes": len(self.nodes),
            "judged": len(ratios),
            "unfinished": unfinished,
            "median": statistics.median(ratios) if ratios else float("nan"),
            "p90": pct(ratios, 0.90),
            "p99": pct(ratios, 0.99),
            "max": ratios[-1] if ratios else float("nan"),
            "fair_share_mbit": fair / MBIT,
            "median_fair": statistics.median(shares) if shares else float("nan"),
            "p99_fair": pct(shares, 0.99),
            "max_fair": shares[-1] if shares else float("nan"),
            "seeder": self.seeder.uploaded / self.size,
            "sim_seconds": ended,
            "wall_seconds": wall,
        }


def parse_size(text: str) -> int:
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "": 1}
    text = text.strip().upper()
    for unit, mult in units.items():
        if unit and text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="100,1000", help="fleet sizes (default 100,1000)")
    p.add_argument("--size", type=parse_size, default=512 << 20, help="checkpoint (512MiB)")
    p.add_argument("--seeder-rate", type=float, default=1000, help="seeder Mbit/s each way")
    p.add_argument("--fast-share", type=float, default=0.1, help="share of fast nodes (0.1)")
    p.add_argument("--fast-rate", type=float, default=1000, help="fast nodes, Mbit/s")
    p.add_argument("--slow-rate", type=float, default=100, help="other nodes, Mbit/s")
    p.add_argument("--join", type=float, default=60.0, help="nodes join over this many s")
    p.add_argument("--leave", type=float, default=0.05, help="share leaving mid-way (0.05)")
    p.add_argument("--neighbours", type=int, default=30, help="peers a node dials (30)")
    p.add_argument("--streams", type=int, default=1, help="connections per source (1)")
    p.add_argument("--rtt", type=float, default=0.02, help="mean round trip, s (0.02)")
    p.add_argument("--dt", type=float, default=0.05, help="clock step, s (0.05)")
    p.add_argument("--limit", type=float, default=3600.0, help="give up after this sim time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    results = []
    for count in (int(x) for x in args.nodes.split(",")):
        started = time.monotonic()
        sim = Sim(args, count)
        ended = sim.run(args.limit)
        results.append(sim.report(time.monotonic() - started, ended))
        print(_line(results[-1]), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps({"args": vars(args), "results": results}))
    return 0


def _line(r: dict[str, float]) -> str:
    def judged(name: str, target: str) -> str:
        return f"{r[name]:.2f}x [{'MET' if r[name] <= TARGETS[target] else 'MISS'}]"

    return (
        f"{r['nodes']:>5.0f} nodes: completion / ideal on its own link:"
        f" median {judged('median', 'median')}  p90 {r['p90']:.2f}x"
        f"  p99 {judged('p99', 'p99')}  max {r['max']:.2f}x\n"
        f"{'':13}on its fair share ({r['fair_share_mbit']:.0f} Mbit/s):"
        f" median {judged('median_fair', 'median')}  p99 {judged('p99_fair', 'p99')}"
        f"  max {r['max_fair']:.2f}x\n"
        f"{'':13}seeder uploaded {judged('seeder', 'seeder')} the checkpoint"
        f"  ({r['judged']:.0f} judged, {r['unfinished']:.0f} unfinished;"
        f" {r['sim_seconds']:.0f} s simulated in {r['wall_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
