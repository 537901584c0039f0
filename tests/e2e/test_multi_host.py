"""Multi-host publish over the authenticated channel (issue 21 item 2), real
processes on 127.0.0.1: one coordinator (``publish --gather 3``) and three
contributors (``publish --contribute-to``), four homes, one signed version;
four servers each serve their own files and a puller gets the version whole
and verified; so does a daemon following the name (static [[peer]] entries
for the four hosts), which switches ``current`` and runs its hook. A
contributor lying about its entries is refused before anything is signed,
by name, and no catalog holds that version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from p2pckpt.home import Home
from tests.e2e.nodes import (
    CLI,
    Server,
    no_mdns,
    read_until,
    run,
    start_daemon,
    start_server,
    wait_until,
)

HOSTS = 4
NAME = "mh-net"
# A contributor whose entries claim a digest its first file does not have.
LIAR = """
import dataclasses, sys
import p2pckpt.multihost.local as mh
honest = mh.local_entries
def lying(home, path):
    root, entries = honest(home, path)
    first = entries[0]
    bad = dataclasses.replace(first.chunks[-1], digest=bytes(32))
    return root, (dataclasses.replace(first, chunks=(*first.chunks[:-1], bad)), *entries[1:])
mh.local_entries = lying
sys.argv[0] = "p2pckpt"
from p2pckpt.cli.main import main
main()
"""


def homes(base: Path) -> tuple[list[Path], Path]:
    """Host 0 coordinates (trusts the others with publish); three pullers
    (one a following daemon) trust host 0 as publisher and all as sources;
    every host lets them pull."""
    hosts = [Home.init(base / f"h{i}")[0] for i in range(HOSTS)]
    pullers = [Home.init(base / name)[0] for name in ("puller", "finder", "follower")]
    for h in [*hosts, *pullers]:
        no_mdns(h.path)
    for i, h in enumerate(hosts):
        if i:
            hosts[0].trust.add(h.key.peer_id, f"h{i}", ("publish",))
            h.trust.add(hosts[0].key.peer_id, "h0", ("pull",))
        for puller in pullers:
            h.trust.add(puller.key.peer_id, puller.path.name, ("pull",))
            puller.trust.add(h.key.peer_id, f"h{i}", ("publish" if i == 0 else "pull",))
    for h in [*hosts, *pullers]:
        h.save_trust()
        h.catalog.close()
    puller = pullers[0]
    for i in range(HOSTS):
        data = base / f"data{i}" / f"rank{i}"
        data.mkdir(parents=True)
        (data / "shard.bin").write_bytes(os.urandom(300_000 + i))
    (base / "data0" / "index.json").write_text('{"ranks": 4}')
    return [h.path for h in hosts], puller.path


def peer_id(home: Path) -> str:
    opened = Home.open(home)
    opened.catalog.close()
    return str(opened.key.peer_id)


def coordinator(
    home: Path, data: Path, version: int, count: int
) -> tuple[subprocess.Popen[str], str]:
    """``publish --gather COUNT`` on port 0; its address from its stderr line."""
    proc = subprocess.Popen(
        [
            *CLI,
            "--home",
            str(home),
            "publish",
            str(data),
            "--name",
            NAME,
            "--version",
            str(version),
            "--gather",
            str(count),
            "--listen",
            "127.0.0.1:0",
            "--gather-timeout",
            "60",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    found, _ = read_until(proc.stderr, r"gathering \S+ on ([0-9.]+:\d+)", 60)
    if found:
        return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"coordinator did not listen: {proc.communicate()}")


def contributor(
    home: Path, data: Path, version: int, addr: str, *, lie: bool = False
) -> subprocess.Popen[str]:
    cli = [sys.executable, "-c", LIAR] if lie else CLI
    return subprocess.Popen(
        [
            *cli,
            "--home",
            str(home),
            "publish",
            str(data),
            "--name",
            NAME,
            "--version",
            str(version),
            "--contribute-to",
            addr,
            "--gather-timeout",
            "60",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_four_hosts_publish_one_version_pulled_whole_and_verified(tmp_path: Path) -> None:
    hosts, puller = homes(tmp_path)
    coord, addr = coordinator(hosts[0], tmp_path / "data0", 1, HOSTS - 1)
    others = [contributor(hosts[i], tmp_path / f"data{i}", 1, addr) for i in range(1, HOSTS)]
    outs = [p.communicate(timeout=60) for p in [coord, *others]]
    for proc, (_, err) in zip([coord, *others], outs, strict=True):
        assert proc.returncode == 0, err
    docs = [json.loads(out) for out, _ in outs]
    assert len({d["root"] for d in docs}) == 1 and docs[0]["files"] == HOSTS + 1
    assert [d["files_here"] for d in docs] == [2, 1, 1, 1]
    servers: list[Server] = []
    try:
        servers = [start_server(h, tmp_path / f"serve{i}.log") for i, h in enumerate(hosts)]
        sources = [a for s in servers for a in ("--from", s.addr)]
        # A daemon following the name, the hosts as static [[peer]] entries:
        # it pulls the version from all four, switches `current`, runs its
        # hook (started now: it works while the pulls below run).
        peers = "".join(
            f'[[peer]]\nid = "{peer_id(h)}"\naddr = "{s.addr}"\n'
            for h, s in zip(hosts, servers, strict=True)
        )
        follower, models = tmp_path / "follower", tmp_path / "models"
        hook = f"echo $P2PCKPT_VERSION $P2PCKPT_PATH > {tmp_path / 'hook.out'}"
        (follower / "d.toml").write_text(
            "[discovery]\nmdns = false\n"
            + peers
            + f'[[follow]]\nname = "{NAME}"\ndir = "{models}"\nhook = ["sh", "-c", "{hook}"]\n'
        )
        servers.append(start_daemon(follower, tmp_path / "follower.log", follower / "d.toml"))
        out = tmp_path / "out"
        run(puller, "pull", f"{NAME}@1", *sources, "-o", str(out))
        for i in range(HOSTS):
            rel = Path(f"rank{i}") / "shard.bin"
            assert (out / rel).read_bytes() == (tmp_path / f"data{i}" / rel).read_bytes()
        assert "matches" in run(puller, "verify", str(out)).stdout
        # Found by itself (static [[peer]] entries: no mDNS on the host's LAN),
        # the newest version, from every host that holds some of it.
        finder = tmp_path / "finder"
        (finder / "config.toml").write_text("[discovery]\nmdns = false\n" + peers)
        found = run(finder, "pull", NAME, "-o", str(tmp_path / "found"), "--json")
        doc = json.loads(found.stdout)
        assert doc["version"] == 1 and len(doc["peers"]) == HOSTS, doc
        assert "matches" in run(finder, "verify", str(tmp_path / "found")).stdout
        hooked = tmp_path / "hook.out"
        wait_until(lambda: hooked.exists() and hooked.read_text(), 60, "the follower's hook")
        current = models / NAME / "current"
        assert hooked.read_text().split() == ["1", str(models / NAME / "1")]
        assert os.readlink(current) == "1"
        for i in range(HOSTS):
            rel = Path(f"rank{i}") / "shard.bin"
            assert (current / rel).read_bytes() == (tmp_path / f"data{i}" / rel).read_bytes()
        pulled = re.search(rf"pulled name={NAME} version=1 .* sources=(\S+)", servers[-1].stop())
        assert pulled is not None
        sources_used = [int(p.rpartition(":")[2]) for p in pulled.group(1).split(",")]
        assert len(sources_used) == HOSTS and all(sources_used), pulled.group(0)
    finally:
        for s in servers:
            s.stop()


def test_a_contributor_lying_about_its_entries_is_refused_before_signing(tmp_path: Path) -> None:
    hosts, _ = homes(tmp_path)
    coord, addr = coordinator(hosts[0], tmp_path / "data0", 2, 2)
    honest = contributor(hosts[1], tmp_path / "data1", 2, addr)
    liar = contributor(hosts[2], tmp_path / "data2", 2, addr, lie=True)
    results = [p.communicate(timeout=60) for p in (coord, honest, liar)]
    for proc, (_, err) in zip((coord, honest, liar), results, strict=True):
        assert proc.returncode != 0
        assert "host h2 (" in err and "rank2/shard.bin" in err and "nothing was signed" in err, err
    for home in hosts:
        assert json.loads(run(home, "ls", "--json").stdout) == []
