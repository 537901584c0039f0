"""Every plain pull joins the swarm (issue 17, item 2), with real processes.

A seeder S, its uplink shaped like a NAS's, and five pullers on one bridged
LAN (network namespaces this test creates): five people pulling the same
checkpoint at once with plain ``p2pckpt pull --from S``. Each pull serves
what it verified and finds the others by mDNS, so S sends far fewer than
five copies, measured on S's own interface (every byte it sent, mDNS and
handshakes included).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.netns import Bridge, bridge
from tests.e2e.nodes import CLI, Server, make_checkpoint, run, same_tree, start_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

NAME = "lab-model"
PULLERS = ["p1", "p2", "p3", "p4", "p5"]
FILES = 32  # of 1 MiB: a chunk each, so five pullers have chunks to trade
SEEDER_RATE = "40mbit"  # alone, a puller takes about 7 s; five copies would take 34 s


@pytest.fixture
def lab() -> Iterator[Bridge]:
    with bridge(["s", *PULLERS]) as net:
        yield net


def _homes(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Homes and peer IDs: S trusts the pullers, each puller S and the others."""
    homes = {k: root / k for k in ["s", *PULLERS]}
    ids = {k: run(h, "init").stdout.strip() for k, h in homes.items()}
    for p in PULLERS:
        run(homes["s"], "trust", "add", ids[p], "--role", "pull")
        run(homes[p], "trust", "add", ids["s"], "--role", "pull", "--role", "publish")
        for q in PULLERS:
            if q != p:  # the lab's pullers trust each other to pull
                run(homes[p], "trust", "add", ids[q], "--name", q, "--role", "pull")
    (homes["s"] / "config.toml").write_text("[discovery]\nmdns = false\n")
    return homes, ids


def _pull(net: Bridge, home: Path, seeder: str, dest: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [*CLI, "--home", str(home), "pull", NAME, "--from", seeder, "-o", str(dest), "--json"]
    return subprocess.Popen(
        net.cmd(home.name, [*argv, *extra]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _all_pulled(
    net: Bridge, homes: dict[str, Path], seeder: Server, root: Path, *extra: str
) -> tuple[int, list[dict[str, Any]]]:
    """Five pulls at once; S's bytes sent meanwhile, in checkpoints, and their reports."""
    sent = net.tx_bytes("s")
    procs = {p: _pull(net, homes[p], seeder.addr, root / f"got-{p}", *extra) for p in PULLERS}
    docs = []
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{p}: {err}"
        docs.append(json.loads(out))
    return net.tx_bytes("s") - sent, docs


def test_five_plain_pulls_load_the_seeder_far_less_than_five_times(
    lab: Bridge, tmp_path: Path
) -> None:
    homes, ids = _homes(tmp_path)
    ckpt = make_checkpoint(
        tmp_path / "ck", {f"shard-{i:02d}.bin": 1 << 20 for i in range(FILES)}, seed=17
    )
    run(homes["s"], "publish", str(ckpt), "--name", NAME, "--version", "1")
    lab.shape("s", SEEDER_RATE)
    seeder = start_server(
        homes["s"],
        tmp_path / "s.log",
        listen=f"{lab.addr['s']}:7450",
        extra=("--no-mdns",),
        prefix=lab.cmd("s", []),
    )
    try:
        sent, docs = _all_pulled(lab, homes, seeder, tmp_path)
    finally:
        seeder.stop()
    for p in PULLERS:
        assert same_tree(ckpt, tmp_path / f"got-{p}")
    size = FILES << 20
    copies = sent / size
    from_fellows = sum(
        peer["bytes"] for doc in docs for peer in doc["peers"] if peer["id"] != ids["s"]
    )
    print(f"seeder sent {copies:.2f} checkpoints; fellows gave {from_fellows / size:.2f}")
    assert copies < 2.5, (copies, docs)  # five plain pulls would be five copies
    assert from_fellows >= 2.5 * size, docs
