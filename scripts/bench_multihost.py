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

The cap stands for each host's uplink (no tc/netns: the pace is real over
real loopback sockets). The puller itself is uncapped: "its own link" is the
loopback, so the 4 hosts' caps add up.

    python scripts/bench_multihost.py                      # 4 x 512 MiB at 25 MB/s
    python scripts/bench_multihost.py --size 64MiB --cap 10MB
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
from tests.e2e.nodes import Server, run, start_server  # noqa: E402

MB = 1_000_000
HOSTS = 4
NAME = "bench-mh"


def parse_size(text: str) -> int:
    units = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "GB": 10**9, "MB": 10**6, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


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
    home = Home.init(path)[0]
    (path / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[transfer]\ncompress = "off"\n[limits]\nupload = {cap}\n'
    )
    return home


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


def timed_pull(puller: Path, name: str, servers: list[Server], out: Path) -> float:
    sources = [a for s in servers for a in ("--from", s.addr)]
    started = time.monotonic()
    run(puller, "pull", name, *sources, "-o", str(out), timeout=3600)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512MiB", help="each host's shard (default 512MiB)")
    parser.add_argument("--cap", default="25MB", help="each host's upload cap (default 25MB)")
    args = parser.parse_args()
    size, cap = parse_size(args.size), parse_size(args.cap)
    total = HOSTS * size
    with tempfile.TemporaryDirectory(prefix="bench-mh-") as tmp:
        work = Path(tmp)
        print(f"writing {HOSTS} x {size / MB:.0f} MB shards ...", flush=True)
        dirs = [work / f"data{i}" for i in range(HOSTS)]
        for i, d in enumerate(dirs):
            write_shard(d / f"rank{i}" / "shard.bin", size, i)
        hosts = [node(work / f"host{i}", cap) for i in range(HOSTS)]
        single = node(work / "single", cap)
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
        results: dict[str, float] = {}
        servers: list[Server] = []
        try:
            servers = [start_server(h.path, work / f"serve{i}.log") for i, h in enumerate(hosts)]
            results["multi-host (4 hosts)"] = timed_pull(
                puller.path, f"{NAME}@1", servers, work / "out-multi"
            )
            for s in servers:
                s.stop()
            servers = [start_server(single.path, work / "serve-single.log")]
            results["today (1 host)"] = timed_pull(
                puller2.path, "bench-one@1", servers, work / "out-one"
            )
        finally:
            for s in servers:
                s.stop()
        print(
            f"{HOSTS} hosts x {size / MB:.0f} MB = {total / MB:.0f} MB, each host's upload"
            f" capped at {cap / MB:.0f} MB/s; hashing, gathering and signing took"
            f" {gathered:.1f}s"
        )
        for what, seconds in results.items():
            print(f"  {what:22} {seconds:7.1f} s  {total / MB / seconds:7.1f} MB/s")
        today, multi = results["today (1 host)"], results["multi-host (4 hosts)"]
        print(f"  ratio (today / multi-host): {today / multi:.2f}x (ideal {HOSTS}x)")


if __name__ == "__main__":
    main()
