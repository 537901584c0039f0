"""Discovery and relay across real network namespaces (issue 3).

Real processes: seeder A and puller B on one bridged LAN (mDNS), a relay R on
that LAN and on a second link to C, which can reach only R; M is an
attacker on the LAN. Namespaces are created and removed by the fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netns import Lan, lan
from tests.e2e.nodes import Server, make_checkpoint, run, same_tree, start_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

NAME = "secret-llama-ft"


@pytest.fixture
def net() -> Iterator[Lan]:
    with lan() as topology:
        yield topology


class Nodes:
    """Homes for A (seeder), B (LAN puller), C (behind the relay), M (attacker)."""

    def __init__(self, root: Path, net: Lan) -> None:
        self.root, self.net = root, net
        self.home = {k: root / k.upper() for k in "abcm"}
        self.ids = {k: run(h, "init").stdout.strip() for k, h in self.home.items()}
        for puller in "bc":
            run(self.home["a"], "trust", "add", self.ids[puller], "--role", "pull")
            run(
                self.home[puller],
                "trust",
                "add",
                self.ids["a"],
                "--name",
                "nas",
                "--role",
                "pull",
                "--role",
                "publish",
                "--role",
                "push",
            )
        self.servers: list[Server] = []

    def run(self, who: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        ns = getattr(self.net, who)
        return run(self.home[who], *args, check=check, prefix=["ip", "netns", "exec", ns])

    def serve(self, who: str, listen: str, *extra: str) -> Server:
        ns = getattr(self.net, who)
        server = start_server(
            self.home[who],
            self.root / f"{who}-{len(self.servers)}.log",
            listen=listen,
            extra=extra,
            prefix=["ip", "netns", "exec", ns],
        )
        self.servers.append(server)
        return server

    def daemon(self, who: str, listen: str, config: Path) -> Server:
        ns = getattr(self.net, who)
        server = start_server(
            self.home[who],
            self.root / f"{who}-daemon-{len(self.servers)}.log",
            listen=listen,
            extra=(),
            prefix=["ip", "netns", "exec", ns],
            command=("daemon", "--config", str(config)),
            banner=r"daemon listening on [0-9.]+:(\d+)",
        )
        self.servers.append(server)
        return server

    def relay(self) -> Server:
        server = start_server(
            self.root / "R",
            self.root / "relay.log",
            listen="0.0.0.0:7451",
            extra=(),
            prefix=["ip", "netns", "exec", self.net.r],
            command=("relay",),
            banner=r"relay listening on [0-9.]+:(\d+)",
        )
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@pytest.fixture
def nodes(tmp_path: Path, net: Lan) -> Iterator[Nodes]:
    n = Nodes(tmp_path, net)
    try:
        yield n
    finally:
        n.stop()


def test_lan_pull_and_ls_without_addresses(nodes: Nodes, tmp_path: Path) -> None:
    """B finds A by mDNS: `ls` shows A's version and `pull NAME` works, directly."""
    ckpt = make_checkpoint(tmp_path / "ck", {"model.safetensors": 6 << 20, "config.json": 200})
    nodes.run("a", "publish", str(ckpt), "--name", NAME)
    nodes.serve("a", "10.231.0.1:7450")
    listed = json.loads(nodes.run("b", "ls", "--json").stdout)
    remote = [r for r in listed if r["where"] != "local"]
    assert [(r["name"], r["where"], r["route"]) for r in remote] == [
        (NAME, nodes.ids["a"], "direct")
    ]
    doc = json.loads(nodes.run("b", "pull", NAME, "-o", str(tmp_path / "got"), "--json").stdout)
    assert same_tree(ckpt, tmp_path / "got")
    assert [p["route"] for p in doc["peers"]] == ["direct"]
    assert doc["peers"][0]["id"] == nodes.ids["a"]
    # A peer ID works wherever an address does.
    by_id = nodes.run("b", "pull", NAME, "--from", nodes.ids["a"], "-o", str(tmp_path / "g2"))
    assert by_id.returncode == 0 and same_tree(ckpt, tmp_path / "g2")


def _capture(nodes: Nodes, out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            nodes.net.r,
            sys.executable,
            str(Path(__file__).with_name("capture.py")),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "capturing"
    return proc


def test_pull_through_relay_sees_only_ciphertext(nodes: Nodes, tmp_path: Path) -> None:
    """C reaches A only through the relay; the relay's wire carries no plaintext;
    B, on A's LAN, still prefers the direct path."""
    data = os.urandom(1 << 20)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(data)
    nodes.run("a", "publish", str(ckpt), "--name", NAME)
    nodes.relay()
    nodes.serve("a", "10.231.0.1:7450", "--relay", "10.231.0.3:7451")
    (nodes.home["c"] / "config.toml").write_text('[relay]\naddr = "10.232.0.1:7451"\n')
    (nodes.home["b"] / "config.toml").write_text('[relay]\naddr = "10.231.0.3:7451"\n')
    cap_file = tmp_path / "relay.cap"
    cap = _capture(nodes, cap_file)
    try:
        doc = json.loads(
            nodes.run("c", "pull", NAME, "-o", str(tmp_path / "c-got"), "--json").stdout
        )
    finally:
        cap.terminate()
        cap.wait(20)
        assert cap.stdout is not None
        cap.stdout.close()
    assert (tmp_path / "c-got" / "model.safetensors").read_bytes() == data
    assert {p["route"] for p in doc["peers"]} == {"relay"}
    wire = cap_file.read_bytes()
    assert len(wire) > len(data)  # the transfer really crossed the relay's links
    assert NAME.encode() not in wire and b"model.safetensors" not in wire
    # Any 64-byte window of the file contains a whole 32-byte-aligned block.
    blocks = {data[i : i + 32] for i in range(0, len(data) - 31, 32)}
    assert not any(wire[i : i + 32] in blocks for i in range(len(wire) - 31))
    b_doc = json.loads(nodes.run("b", "pull", NAME, "-o", str(tmp_path / "b-got"), "--json").stdout)
    assert {p["route"] for p in b_doc["peers"]} == {"direct"}


def test_spoofed_mdns_record_gets_a_refused_handshake(nodes: Nodes, tmp_path: Path) -> None:
    """M announces A's peer ID at M's address: B's handshake check refuses M."""
    run(
        nodes.home["m"],
        "trust",
        "add",
        nodes.ids["b"],
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )  # M would happily serve B
    f = tmp_path / "evil.pt"
    f.write_bytes(os.urandom(100_000))
    nodes.run("m", "publish", str(f), "--name", NAME)
    nodes.serve("m", "10.231.0.4:7450", "--no-mdns")
    spoof = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            nodes.net.m,
            sys.executable,
            "-c",
            "import trio, sys\n"
            "from p2pckpt.discovery.mdns import announce\n"
            "from p2pckpt.identity.peer_id import PeerId\n"
            "async def main():\n"
            "    async with trio.open_nursery() as n:\n"
            "        await n.start(announce, PeerId.parse(sys.argv[1]), 7450, lambda: 1)\n"
            "        print('announced', flush=True)\n"
            "trio.run(main)\n",
            nodes.ids["a"],
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert spoof.stdout is not None and spoof.stdout.readline().strip() == "announced"
        proc = nodes.run(
            "b", "pull", NAME, "--from", nodes.ids["a"], "-o", str(tmp_path / "x"), check=False
        )
    finally:
        spoof.terminate()
        spoof.wait(20)
        assert spoof.stdout is not None
        spoof.stdout.close()
    assert proc.returncode != 0
    assert "not the expected" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_follower_hears_new_versions_by_mdns_epoch(nodes: Nodes, tmp_path: Path) -> None:
    """A following daemon with no addresses configured learns of each new
    version from the catalog epoch in A's mDNS announcement and has it
    installed within 5 s; its own fallback poll (30 s) is far too slow to
    explain that, so the epoch is what woke it."""
    from p2pckpt.daemon.follow import MDNS_POLL_SECONDS

    assert MDNS_POLL_SECONDS >= 10
    models = tmp_path / "models"
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[discovery]\nmdns = true\n[[follow]]\nname = "{NAME}"\ndir = "{models}"\n')
    nodes.serve("a", "10.231.0.1:7450")
    follower = nodes.daemon("b", "10.231.0.2:0", cfg)
    # The follower's first check finds nothing to pull (A holds nothing yet).
    deadline = time.monotonic() + 15
    while f"follow check name={NAME}" not in follower.log.read_text():
        assert time.monotonic() < deadline, follower.log.read_text()
        time.sleep(0.05)
    current = models / NAME / "current"
    for version in (1, 2):
        ckpt = make_checkpoint(tmp_path / f"ck{version}", {"w.bin": 3 << 20}, seed=version)
        nodes.run("a", "publish", str(ckpt), "--name", NAME, "--version", str(version))
        published = time.monotonic()  # the version exists from here on
        while not (current.is_symlink() and os.readlink(current) == str(version)):
            assert time.monotonic() - published < 5, follower.log.read_text()
            time.sleep(0.05)
        assert same_tree(ckpt, current)
    (peer,) = json.loads(nodes.run("b", "status", "--json").stdout)["peers"]
    where = (peer["id"], peer["route"], peer["addr"])
    assert where == (nodes.ids["a"], "direct", "10.231.0.1:7450")
