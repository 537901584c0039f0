"""Multi-host publish (issue 21, item 2): a puller against 4 capped hosts.

Four homes ("hosts") each hold one shard of SIZE bytes (default 512 MiB, 2 GiB
in all) and publish them as one version signed by host 0 (the gathering run
in this process with the same steps the torch hook runs: hash in place,
challenge, sign, record each host's share); each host serves its own shard
with its upload capped (``[limits] upload``, default 25 MB/s). A puller pulls
the version ``--from`` all four. **Today**, in the same run: the same 4 shards
published whole from one host with the same cap, pulled from it alone.
Target: multi-host at about 4x today (the puller's own link, not one
host's uplink).

Two ways to cap each host's uplink (``--shape``):

* ``tc`` (the default as root): every host, and the puller, in a network
  namespace of its own on one bridge (``tests/e2e/netns.py``); each host's
  link shaped with tc (tbf) on its veth at the cap, the puller's link in
  both directions at ``--puller-link`` (default: room for all four hosts
  and half as much again). The namespaces are removed at exit, also after
  Ctrl-C or SIGTERM. Nothing leaves them: no traffic reaches a real network.
* ``limit``: ``[limits] upload`` in each host's config over loopback (the
  pace is real over real sockets; the puller is uncapped: "its own link" is
  the loopback, so the 4 hosts' caps add up).

The times are of the whole ``p2pckpt pull`` command (process start, dial,
manifest, transfer, commit); the pull's own ``seconds`` are printed beside them.

    sudo python scripts/bench_multihost.py                 # 4 x 512 MiB at 25 MB/s, tc
    python scripts/bench_multihost.py --size 64MiB --cap 10MB --shape limit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pckpt.config import parse_size  # noqa: E402 - 2GiB, 25MB, as the config takes them
from p2pckpt.home import Home  # noqa: E402
from p2pckpt.manifest.gather import SEED_BYTES, Gather, pick_proof  # noqa: E402
from p2pckpt.multihost.local import (  # noqa: E402
    local_entries,
    read_proof,
    record_share,
    sign_gathered,
    wire_of,
)
from p2pckpt.publish import publish  # noqa: E402
from tests.e2e.netns import Bridge, bridge  # noqa: E402
from tests.e2e.nodes import Server, run, start_server  # noqa: E402

MB = 1_000_000
HOSTS = 4
NAME = "bench-mh"


def write_shard(path: Path, size: int, seed: int) -> None:
    """``size`` bytes nobody else holds (no chunk is deduplicated)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(rng.bytes(n))
            left -= n


def node(path: Path, cap: int) -> Home:
    """A home; ``cap``: its ``[limits] upload`` (0: none)."""
    home = Home.init(path)[0]
    (path / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[transfer]\ncompress = "off"\n[limits]\nupload = {cap}\n'
    )
    return home


@dataclass(frozen=True)
class Net:
    """Where each node runs: a namespace of ``lan`` (tc mode), or loopback."""

    lan: Bridge | None = None

    def prefix(self, key: str) -> list[str]:
        return self.lan.cmd(key, []) if self.lan is not None else []

    def listen(self, key: str) -> str:
        return f"{self.lan.addr[key] if self.lan is not None else '127.0.0.1'}:0"

    def serve(self, key: str, home: Path, log: Path) -> Server:
        return start_server(home, log, listen=self.listen(key), prefix=self.prefix(key))


def tbf(ns: str, dev: str, rate: int) -> None:
    """Shape what leaves ``dev`` in namespace ``ns`` at ``rate`` bytes/s (tc tbf;
    the burst is one 1 ms tick's worth, and at least 64 KiB)."""
    import subprocess

    burst = max(64 << 10, rate // 1000)
    qdisc = ["qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate * 8}bit"]
    subprocess.run(
        ["tc", "-n", ns, *qdisc, "burst", str(burst), "latency", "400ms"],
        check=True,
        capture_output=True,
        timeout=20,
    )


@contextlib.contextmanager
def shaped(keys: list[str], puller: str, cap: int, puller_link: int) -> Iterator[Net]:
    """Namespaces for ``keys`` on one bridge: each host's uplink at ``cap``,
    ``puller``'s link at ``puller_link`` both ways (its uplink on its own
    veth, its downlink on the bridge port that sends to it). All removed at
    exit, also after Ctrl-C or SIGTERM (turned into KeyboardInterrupt)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, stop)
    try:
        with bridge(keys) as lan:
            for key in keys:
                tbf(lan.ns[key], "eth0", puller_link if key == puller else cap)
            tbf(lan.sw, lan.ports[puller], puller_link)  # what the bridge sends it
            yield Net(lan)
    finally:
        signal.signal(signal.SIGTERM, old)


def trust(a: Home, b: Home, *roles: str) -> None:
    a.trust.add(b.key.peer_id, "", roles)
    a.save_trust()


def gather_publish(hosts: list[Home], dirs: list[Path]) -> None:
    """The torch hook's steps, in one process: entries, challenge, proofs, sign, shares."""
    mine = [local_entries(h, d) for h, d in zip(hosts, dirs, strict=True)]
    g = Gather(NAME, 1)
    labels = [f"host {i}" for i in range(len(hosts))]
    for label, (_, entries) in zip(labels, mine, strict=True):
        g.add(label, wire_of(entries))
    seed = os.urandom(SEED_BYTES)
    g.challenge(seed)
    for label, (root, entries) in zip(labels, mine, strict=True):
        g.check_proof(label, read_proof(root, pick_proof(entries, seed, label)))
    _, envelope = sign_gathered(hosts[0], g)
    for h, (root, entries) in zip(hosts, mine, strict=True):
        record_share(h, envelope, root, entries, hosts[0].key.peer_id.key)


class Meter:
    """What each server sends on its namespace's eth0 while a pull runs,
    sampled every SAMPLE seconds in a thread (from /proc/PID/net/dev, which
    shows the process' own namespace: no process started per sample)."""

    SAMPLE = 0.2

    def __init__(self, servers: list[Server]) -> None:
        self.pids = [s.proc.pid for s in servers]
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sent(pid: int) -> int:
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "eth0":
                return int(counters.split()[8])  # rx: 8 counters, then tx bytes
        return 0

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.SAMPLE):
            with contextlib.suppress(OSError):
                now = [self.sent(pid) for pid in self.pids]
                self.samples.append((time.monotonic() - started, now))

    def __enter__(self) -> Meter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rates(self) -> list[tuple[float, float]]:
        """For each server: its rate (bytes/s) from 5% to 95% of what it
        sent, and when it was done (99% sent: the connections' teardown at
        the pull's end comes later; seconds from the first sample)."""
        out = []
        for i in range(len(self.pids)):
            series = [(t, sent[i]) for t, sent in self.samples]
            if len(series) < 2 or series[-1][1] == series[0][1]:
                out.append((0.0, 0.0))
                continue
            first, span = series[0][1], series[-1][1] - series[0][1]
            t5, t95, done = (
                next(t for t, b in series if b - first >= frac * span)
                for frac in (0.05, 0.95, 0.99)
            )
            out.append((0.9 * span / max(t95 - t5, self.SAMPLE), done))
        return out


@dataclass(frozen=True)
class Timing:
    seconds: float  # the whole command
    own: float  # the pull's own ``seconds``
    cpu: float  # the pull process' CPU seconds (user + system)
    rates: list[tuple[float, float]]  # tc mode: ``Meter.rates``


def timed_pull(net: Net, puller: Path, name: str, servers: list[Server], out: Path) -> Timing:
    """Run one pull; how long it took, its CPU time, each server's rate."""
    sources = [a for s in servers for a in ("--from", s.addr)]
    meter = Meter(servers) if net.lan is not None else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with meter if meter is not None else contextlib.nullcontext():
        done = run(
            puller,
            "pull",
            name,
            *sources,
            "-o",
            str(out),
            "--json",
            timeout=3600,
            prefix=net.prefix("puller"),
        )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pull is the child waited for
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rates = meter.rates() if meter is not None else []
    return Timing(seconds, float(json.loads(done.stdout)["seconds"]), cpu, rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512MiB", help="each host's shard (default 512MiB)")
    parser.add_argument("--cap", default="25MB", help="each host's uplink (default 25MB/s)")
    parser.add_argument(
        "--shape",
        choices=("tc", "limit"),
        default="tc" if os.geteuid() == 0 and shutil.which("tc") else "limit",
        help="tc: namespaces and tbf (default as root); limit: [limits] upload on loopback",
    )
    parser.add_argument(
        "--puller-link", default=None, help="tc: the puller's link (default 1.5 x 4 x cap)"
    )
    args = parser.parse_args()
    size, cap = parse_size(args.size), parse_size(args.cap)
    link = parse_size(args.puller_link) if args.puller_link else HOSTS * cap * 3 // 2
    total = HOSTS * size
    keys = [*(f"h{i}" for i in range(HOSTS)), "single", "puller"]
    limit = cap if args.shape == "limit" else 0
    with tempfile.TemporaryDirectory(prefix="bench-mh-") as tmp:
        work = Path(tmp)
        print(f"writing {HOSTS} x {size / MB:.0f} MB shards ...", flush=True)
        dirs = [work / f"data{i}" for i in range(HOSTS)]
        for i, d in enumerate(dirs):
            write_shard(d / f"rank{i}" / "shard.bin", size, i)
        hosts = [node(work / f"host{i}", limit) for i in range(HOSTS)]
        single = node(work / "single", limit)
        # two pullers: the second would reuse the first's chunks (same bytes)
        puller, puller2 = node(work / "puller", 0), node(work / "puller2", 0)
        for h in hosts:
            trust(h, puller, "pull")
            trust(puller, h, "publish" if h is hosts[0] else "pull")
        trust(single, puller2, "pull")
        trust(puller2, single, "publish")
        # today: the same files published whole from one host (hard links, no copy)
        whole = work / "whole"
        for i, d in enumerate(dirs):
            (whole / f"rank{i}").mkdir(parents=True)
            os.link(d / f"rank{i}" / "shard.bin", whole / f"rank{i}" / "shard.bin")
        started = time.monotonic()
        gather_publish(hosts, dirs)
        gathered = time.monotonic() - started
        publish(single, whole, "bench-one", 1)
        for h in [*hosts, single, puller, puller2]:
            h.catalog.close()
        results: dict[str, Timing] = {}
        with (
            shaped(keys, "puller", cap, link)
            if limit == 0
            else contextlib.nullcontext(Net()) as net
        ):
            servers: list[Server] = []
            try:
                servers = [
                    net.serve(f"h{i}", h.path, work / f"serve{i}.log") for i, h in enumerate(hosts)
                ]
                results["multi-host (4 hosts)"] = timed_pull(
                    net, puller.path, f"{NAME}@1", servers, work / "out-multi"
                )
                for s in servers:
                    s.stop()
                servers = [net.serve("single", single.path, work / "serve-single.log")]
                results["today (1 host)"] = timed_pull(
                    net, puller2.path, "bench-one@1", servers, work / "out-one"
                )
            finally:
                for s in servers:
                    s.stop()
        how = (
            f"shaped with tc tbf in network namespaces, the puller's link {link / MB:.0f} MB/s"
            if limit == 0
            else "capped by [limits] upload over loopback"
        )
        print(
            f"{HOSTS} hosts x {size / MB:.0f} MB = {total / MB:.0f} MB, each host's uplink"
            f" {cap / MB:.1f} MB/s ({how}); hashing, gathering and signing took {gathered:.1f}s"
        )
        for what, t in results.items():
            print(
                f"  {what:22} {t.seconds:7.1f} s  {total / MB / t.seconds:7.1f} MB/s"
                f"   (the pull's own: {t.own:6.1f} s {total / MB / t.own:7.1f} MB/s;"
                f" its CPU {t.cpu:.1f} s, {100 * t.cpu / t.seconds:.0f}% of a core)"
            )
            if t.rates:  # each uplink's use: how close to its cap, and the stragglers
                print(
                    "    each host sent at "
                    + ", ".join(f"{r / MB:.1f}" for r, _ in t.rates)
                    + " MB/s on the wire (5-95% of its bytes), 99% sent at "
                    + ", ".join(f"{d:.1f}" for _, d in t.rates)
                    + " s"
                )
        today, multi = results["today (1 host)"].seconds, results["multi-host (4 hosts)"].seconds
        own1, own4 = results["today (1 host)"].own, results["multi-host (4 hosts)"].own
        print(
            f"  ratio (today / multi-host): {today / multi:.2f}x, the pulls' own"
            f" {own1 / own4:.2f}x (ideal {HOSTS}x)"
        )


if __name__ == "__main__":
    main()
