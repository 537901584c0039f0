"""Swarm pulls with real processes (issue 5): several sources at once, a bad
one banned, a vanished one replaced, and a puller feeding another."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import trio

from p2pckpt.home import Home
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import chunk_header
from tests.e2e.nodes import (
    Pair,
    Server,
    make_checkpoint,
    no_mdns,
    run,
    same_tree,
    start_relay,
    start_server,
    wait_until,
)
from tests.e2e.test_security import EvilSeeder, arun, new_key

NAME = "swarm-ft"


def _node(
    root: Path, name: str, pair: Pair, roles_from_b: tuple[str, ...] = ()
) -> tuple[Path, str]:
    """A third node trusted both ways by A and B (A publishes, B pulls)."""
    home = root / name
    pid = run(home, "init").stdout.strip()
    no_mdns(home)
    run(
        home,
        "trust",
        "add",
        pair.a_id,
        "--name",
        "a",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    run(home, "trust", "add", pair.b_id, "--name", "b", "--role", "pull")
    run(pair.a, "trust", "add", pid, "--role", "pull")
    run(
        pair.b,
        "trust",
        "add",
        pid,
        "--name",
        name.lower(),
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    return home, pid


def _throttled(home: Path, rate: int) -> None:
    (home / "config.toml").write_text(f"[discovery]\nmdns = false\n[limits]\nupload = {rate}\n")


async def test_three_sources_one_corrupt_one_killed(pair: Pair, tmp_path: Path) -> None:
    """B pulls from A (honest), C (killed mid-transfer) and M (every chunk it
    sends is corrupt): the pull completes byte for byte, M is reported bad
    and C lost, and no bad byte is ever written."""
    ckpt = make_checkpoint(tmp_path / "ck", {"model.safetensors": 48 << 20, "c.json": 300})
    run(pair.a, "publish", str(ckpt), "--name", NAME, "--version", "3")
    c, c_id = _node(tmp_path, "C", pair)
    a_fast = pair.serve_a()
    run(c, "pull", NAME, "--from", a_fast.addr, "-o", str(tmp_path / "c-copy"))
    a_fast.stop()
    # Slow seeders, so the transfer lasts long enough to kill C in the middle.
    _throttled(pair.a, 6_000_000)
    _throttled(c, 6_000_000)
    a = pair.serve_a()
    cs = start_server(c, tmp_path / "c.log")
    pair.servers.append(cs)
    # M: the same signed version (A's envelope), every chunk flipped.
    key = new_key(tmp_path / "M")
    run(
        pair.b,
        "trust",
        "add",
        str(key.peer_id),
        "--name",
        "m",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    entry = Home.open(pair.a).catalog.find(NAME, 3)
    assert entry is not None
    manifest = entry.manifest()
    pieces = [
        (ckpt / f.path).read_bytes()[chunk.offset : chunk.offset + chunk.length]
        for _, f, chunk in manifest.iter_chunks()
    ]
    evil = EvilSeeder(key)

    def flipped(req: m.ChunkRequest) -> bytes:
        bad = bytearray(pieces[req.index])
        bad[0] ^= 0xFF
        return chunk_header(req.req_id, len(bad)) + bytes(bad)

    evil.offer(entry.envelope, pieces, chunk_reply=flipped)
    dest = tmp_path / "out"
    journal = tmp_path / ".out.p2pckpt-partial" / "journal"
    async with trio.open_nursery() as nursery:
        await evil.start(nursery)

        async def kill_c_mid_transfer() -> None:
            with trio.fail_after(60):
                # another process writes the journal: nothing to wait on but polling
                while not (journal.exists() and journal.stat().st_size > 41 + 8 * 2):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            cs.proc.kill()

        nursery.start_soon(kill_c_mid_transfer)
        proc = await arun(
            pair.b,
            "pull",
            NAME,
            "--from",
            a.addr,
            "--from",
            cs.addr,
            "--from",
            evil.addr,
            "-o",
            str(dest),
            "--json",
            timeout=120,
        )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    assert same_tree(ckpt, dest)
    doc = json.loads(proc.stdout)
    by_id = {p["id"]: p for p in doc["peers"]}
    assert by_id[str(key.peer_id)]["status"] == "bad"
    assert "hash mismatch" in by_id[str(key.peer_id)]["problem"]
    assert by_id[c_id]["status"] == "lost"
    assert by_id[pair.a_id]["status"] == "ok" and by_id[pair.a_id]["bytes"] > 0
    assert sum(p["bytes"] for p in doc["peers"]) == doc["bytes_downloaded"]
    assert f"peer {key.peer_id}" in proc.stderr and "dropped" in proc.stderr


def test_a_puller_feeds_another_while_it_pulls(pair: Pair, tmp_path: Path) -> None:
    """D (a daemon following the name) pulls slowly from A; B, which is given
    only D's address, starts while D is still pulling and completes from D."""
    ckpt = make_checkpoint(tmp_path / "ck", {"w.bin": 16 << 20}, seed=9)
    run(pair.a, "publish", str(ckpt), "--name", NAME, "--version", "1")
    _throttled(pair.a, 3_000_000)  # about 5.6 s for D
    a = pair.serve_a()
    d, d_id = _node(tmp_path, "D", pair)
    models = tmp_path / "models"
    cfg = d / "daemon.toml"
    cfg.write_text(
        f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[[peer]]\nid = "{pair.a_id}"\naddr = "{a.addr}"\n'
        f'[[follow]]\nname = "{NAME}"\ndir = "{models}"\n'
    )
    daemon: Server = start_server(
        d,
        tmp_path / "d.log",
        command=("daemon", "--config", str(cfg)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )
    pair.servers.append(daemon)
    journal = models / NAME / ".1.p2pckpt-partial" / "journal"
    wait_until(lambda: journal.exists() and journal.stat().st_size > 41, 30, "D to start pulling")
    current = models / NAME / "current"
    assert not os.path.lexists(current)  # D is still pulling as B starts
    doc = json.loads(
        run(pair.b, "pull", NAME, "--from", daemon.addr, "-o", str(tmp_path / "b"), "--json").stdout
    )
    assert same_tree(ckpt, tmp_path / "b" / "w.bin") or same_tree(ckpt, tmp_path / "b")
    assert [p["id"] for p in doc["peers"]] == [d_id] and doc["peers"][0]["status"] == "ok"
    assert doc["bytes_downloaded"] == 16 << 20


def test_push_targets_feed_each_other(pair: Pair, tmp_path: Path) -> None:
    """push --to C --to D tells each target where the other is: they pull
    from each other as well as from the pusher, whose upload is capped, so
    the pusher uploads well under the two copies a plain fan-out would."""
    files = {f"shard-{i:02d}.bin": 256 << 10 for i in range(48)}  # 48 small chunks
    ckpt = make_checkpoint(tmp_path / "ck", files, seed=5)
    size = sum(files.values())
    run(pair.a, "publish", str(ckpt), "--name", NAME, "--version", "2")
    _throttled(pair.a, 4_000_000)  # the pusher's uplink is the bottleneck
    c, c_id = _node(tmp_path, "C", pair)
    d, d_id = _node(tmp_path, "D", pair)
    run(c, "trust", "add", d_id, "--name", "d", "--role", "pull")
    run(d, "trust", "add", c_id, "--name", "c", "--role", "pull")
    daemons = {}
    for home in (c, d):
        cfg = home / "daemon.toml"
        cfg.write_text(
            f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
            f'[[follow]]\nname = "{NAME}"\ndir = "{home / "models"}"\n'
        )
        daemons[home] = start_server(
            home,
            tmp_path / f"{home.name}.log",
            command=("daemon", "--config", str(cfg)),
            extra=(),
            banner=r"daemon listening on [0-9.]+:(\d+)",
        )
        pair.servers.append(daemons[home])
    dc, dd = daemons[c], daemons[d]
    proc = run(
        pair.a, "push", NAME, "--to", dc.addr, "--to", dd.addr, "--listen", "127.0.0.1:0", "--json"
    )
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and all(t["ok"] for t in doc["targets"].values()), doc
    for home in (c, d):
        assert same_tree(ckpt, home / "models" / NAME / "current")
    # Each target names the other as a source that delivered bytes.
    for server, other in ((dc, d_id), (dd, c_id)):
        text = server.log.read_text()
        assert f"source joined peer={other[:5]}" in text, text
        (sources,) = re.findall(rf"pulled name={NAME} version=2 .* sources=(\S+)", text)
        got = dict(s.split(":") for s in sources.split(","))
        assert int(got[other[:5]]) > 0, sources
        assert sum(map(int, got.values())) == size
    # A plain fan-out uploads two full copies; the swarm, well under that.
    assert size <= doc["bytes_served"] < 1.8 * size, doc["bytes_served"] / size


def test_a_direct_peer_is_preferred_over_the_relay_for_chunks_it_has(
    pair: Pair, tmp_path: Path
) -> None:
    """B pulls from A, reached only through a relay, and from C, a peer on
    the LAN that already holds the version: every chunk comes from C and
    nothing crosses the relay but the Have (issue 17, item 3)."""
    relay = start_relay(pair.root, tmp_path / "relay.log")
    pair.servers.append(relay)
    ckpt = make_checkpoint(tmp_path / "ck", {"w.bin": 12 << 20}, seed=5)
    run(pair.a, "publish", str(ckpt), "--name", NAME, "--version", "1")
    a = start_server(pair.a, tmp_path / "a.log", extra=("--no-mdns", "--relay", relay.addr))
    pair.servers.append(a)
    c, c_id = _node(tmp_path, "C", pair)
    run(c, "pull", NAME, "--from", a.addr, "-o", str(tmp_path / "c-copy"))  # C holds it now
    c_server = start_server(c, tmp_path / "c.log")
    pair.servers.append(c_server)
    (pair.b / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[relay]\naddr = "{relay.addr}"\n'
    )
    proc = run(
        pair.b,
        "pull",
        NAME,
        "--from",
        pair.a_id,  # by peer ID: through the relay
        "--from",
        c_server.addr,
        "-o",
        str(tmp_path / "got"),
        "--json",
    )
    doc = json.loads(proc.stdout)
    assert same_tree(ckpt, tmp_path / "got") or same_tree(ckpt / "w.bin", tmp_path / "got")
    by_id = {p["id"]: p for p in doc["peers"]}
    assert by_id[pair.a_id]["route"] == "relay" and by_id[c_id]["route"] == "direct"
    assert by_id[pair.a_id]["bytes"] == 0, doc  # nothing through the relay
    assert by_id[c_id]["bytes"] == doc["bytes_downloaded"] == 12 << 20
