"""Trust that means what it says (issue 13), with real processes on 127.0.0.1:
revocation reaches a running node at once, least privilege by default, a
follower installs only its publishers' versions, a stolen key's huge version
is recoverable, expired and equivocating feeds are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pckpt.identity.keys import KEY_FILE
from tests.e2e.nodes import (
    CLI,
    Server,
    make_checkpoint,
    no_mdns,
    run,
    run_json,
    start_daemon,
    start_server,
    wait_until,
)

ALL_ROLES = ("--role", "pull", "--role", "publish", "--role", "push")


def _node(root: Path, name: str) -> tuple[Path, str]:
    home = root / name
    peer_id = run(home, "init").stdout.strip()
    no_mdns(home)
    return home, peer_id


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def _follow_config(path: Path, peers: dict[str, str], models: Path, extra: str = "") -> Path:
    """A follower's config: static peers (ID -> addr), one [[follow]] of "m"."""
    static = "".join(f'[[peer]]\nid = "{pid}"\naddr = "{addr}"\n' for pid, addr in peers.items())
    path.write_text(
        '[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'{static}[[follow]]\nname = "m"\ndir = "{models}"\n{extra}'
    )
    return path


def _hook(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$P2PCKPT_VERSION $P2PCKPT_PUBLISHER" >> {out}\n')
    hook.chmod(0o755)
    return hook, out


def _current(models: Path) -> str | None:
    """The version ``current`` names (its link's first component)."""
    link = models / "m" / "current"
    return os.readlink(link).split("/", 1)[0] if os.path.islink(link) else None


def test_trust_add_grants_pull_only(tmp_path: Path, servers: list[Server]) -> None:
    """`trust add` with no --role lets that peer pull from us and nothing else:
    a seeder trusted that way cannot get its versions accepted (exit 7, with
    the command that grants it); with --role publish the same pull works."""
    a, a_id = _node(tmp_path, "A")
    b, b_id = _node(tmp_path, "B")
    run(a, "trust", "add", b_id)
    added = run(b, "trust", "add", a_id, "--name", "nas")
    assert added.stdout.strip().endswith(": pull")
    (entry,) = run_json(b, "trust", "ls")
    assert entry["roles"] == ["pull"]
    header, line = run(b, "trust", "ls").stdout.splitlines()
    assert header.startswith("PEER ID") and "ROLES" in header
    assert line.startswith(a_id) and line.endswith("pull: may pull from us")
    ck = tmp_path / "m.pt"
    ck.write_bytes(os.urandom(100_000))
    run(a, "publish", str(ck), "--name", "m")
    server = start_server(a, tmp_path / "a.log")
    servers.append(server)
    refused = run(b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "x"), check=False)
    assert refused.returncode == 7, refused.stderr
    assert "not with the 'publish' role" in refused.stderr
    assert "--role publish" in refused.stderr
    assert not (tmp_path / "x").exists()
    run(b, "trust", "add", a_id, "--role", "publish")
    doc = run_json(b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "y"))
    assert doc["bytes_downloaded"] == 100_000
    listed = run_json(b, "ls", "--local")
    assert [r["publisher_name"] for r in listed] == ["nas"]  # ls shows the publisher


def test_trust_rm_stops_a_follower_and_its_running_pull(
    tmp_path: Path, servers: list[Server]
) -> None:
    """After `trust rm A` on a following daemon, A's next version is never
    installed and the hook does not run; a pull of A's version already under
    way stops before anything is committed."""
    a, a_id = _node(tmp_path, "A")
    b, b_id = _node(tmp_path, "B")
    run(a, "trust", "add", b_id)
    run(b, "trust", "add", a_id, "--name", "nas", "--role", "publish")
    # 3 MB/s from A: version 2 (24 MiB) takes ~8 s, long enough to revoke mid-pull.
    (a / "config.toml").write_text("[discovery]\nmdns = false\n[limits]\nupload = 3000000\n")
    seeder = start_server(a, tmp_path / "a.log")
    servers.append(seeder)
    run(a, "publish", str(make_checkpoint(tmp_path / "v1", {"w.bin": 1 << 20})), "--name", "m")
    models = tmp_path / "models"
    hook, hook_out = _hook(tmp_path)
    cfg = _follow_config(tmp_path / "b.toml", {a_id: seeder.addr}, models, f'hook = ["{hook}"]\n')
    follower = start_daemon(b, tmp_path / "b.log", cfg)
    servers.append(follower)
    wait_until(lambda: _current(models) == "1" and hook_out.exists(), 30, "version 1 installed")

    big = make_checkpoint(tmp_path / "v2", {"w.bin": 24 << 20}, seed=2)
    run(a, "publish", str(big), "--name", "m")

    def pulling() -> bool:
        status = json.loads(run(b, "status", "--json").stdout)
        return any(t["bytes_done"] > 0 and t["version"] == 2 for t in status["transfers"])

    wait_until(pulling, 30, "the follower pulling version 2")
    revoked = time.monotonic()
    run(b, "trust", "rm", "nas")
    wait_until(
        lambda: "pull stopped name=m version=2" in follower.log.read_text(),
        10,
        "the running pull to stop",
    )
    assert time.monotonic() - revoked < 5  # generous: the guard looks every 0.25 s
    # The next checks refuse A outright (the follow polls every 2 s).
    wait_until(
        lambda: follower.log.read_text().count("not a publisher we trust") >= 1,
        15,
        "a follow check refusing A",
    )
    assert _current(models) == "1"
    assert not (models / "m" / "2").exists()
    assert hook_out.read_text().split()[0] == "1"
    assert len(hook_out.read_text().splitlines()) == 1
    assert follower.alive()


def test_trust_rm_closes_open_connections_on_the_seeder(
    tmp_path: Path, servers: list[Server]
) -> None:
    """A seeder that stops trusting a peer closes that peer's connections
    already open (not only the next ones): the puller's pull ends at once."""
    a, a_id = _node(tmp_path, "A")
    b, b_id = _node(tmp_path, "B")
    run(a, "trust", "add", b_id, "--name", "ws")
    run(b, "trust", "add", a_id, "--role", "publish")
    (a / "config.toml").write_text("[discovery]\nmdns = false\n[limits]\nupload = 2000000\n")
    run(a, "publish", str(make_checkpoint(tmp_path / "ck", {"w.bin": 40 << 20})), "--name", "m")
    seeder = start_server(a, tmp_path / "a.log")
    servers.append(seeder)
    out = tmp_path / "out"
    argv = [*CLI, "--home", str(b), "-v", "pull", "m", "--from", seeder.addr, "-o", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: "peer connected peer=" in seeder.log.read_text(), 30, "the pull to connect"
        )
        revoked = time.monotonic()
        run(a, "trust", "rm", "ws")
        _, err = proc.communicate(timeout=30)
        ended = time.monotonic() - revoked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode != 0, err
    assert ended < 10, "40 MiB at 2 MB/s would take 20 s: the connection was cut"
    assert "peer no longer trusted peer=" in seeder.log.read_text()
    assert seeder.alive()
    assert not out.exists()


def test_follow_installs_only_its_publishers(tmp_path: Path, servers: list[Server]) -> None:
    """With `publishers = ["nas"]` a follower ignores a higher version of the
    name signed by another peer it trusts to publish (a workstation's .pt
    must not replace the NAS's sharded model)."""
    nas, nas_id = _node(tmp_path, "NAS")
    ws, ws_id = _node(tmp_path, "WS")
    b, b_id = _node(tmp_path, "B")
    for seeder in (nas, ws):
        run(seeder, "trust", "add", b_id)
    run(b, "trust", "add", nas_id, "--name", "nas", "--role", "publish")
    run(b, "trust", "add", ws_id, "--name", "ws", "--role", "publish")
    sharded = make_checkpoint(tmp_path / "sharded", {"a.safetensors": 1 << 20, "b.json": 100})
    run(nas, "publish", str(sharded), "--name", "m", "--version", "3")
    stray = tmp_path / "ws.pt"
    stray.write_bytes(os.urandom(50_000))
    run(ws, "publish", str(stray), "--name", "m", "--version", "9")
    nas_srv = start_server(nas, tmp_path / "nas.log")
    ws_srv = start_server(ws, tmp_path / "ws.log")
    servers += [nas_srv, ws_srv]
    models = tmp_path / "models"
    cfg = _follow_config(
        tmp_path / "b.toml",
        {nas_id: nas_srv.addr, ws_id: ws_srv.addr},
        models,
        'publishers = ["nas"]\n',
    )
    follower = start_daemon(b, tmp_path / "b.log", cfg)
    servers.append(follower)
    wait_until(lambda: _current(models) == "3", 30, "the NAS's version installed")
    log = follower.log.read_text()
    assert "not one of the publishers asked for (nas)" in log
    assert not (models / "m" / "9").exists()
    assert sorted(p.name for p in (models / "m" / "3").iterdir()) == ["a.safetensors", "b.json"]
    # The CLI's --publisher is the same rule; without it, two publishers'
    # versions compete and the newest wins.
    chosen = run_json(
        b,
        "pull",
        "m",
        "--from",
        ws_srv.addr,
        "--from",
        nas_srv.addr,
        "--publisher",
        "nas",
        "-o",
        str(tmp_path / "p"),
    )
    assert (chosen["version"], chosen["publisher"]) == (3, nas_id)
    unknown = run(b, "pull", "m", "--publisher", "nobody", check=False)
    assert unknown.returncode == 2 and "--publisher nobody" in unknown.stderr


def test_stolen_key_fast_forward_is_recoverable(tmp_path: Path, servers: list[Server]) -> None:
    """A key that signed m@2^63-1 freezes the name only while it is trusted:
    `trust rm` forgets what it signed, and a new key's m@5 is installed and
    pulled normally (R-23)."""
    old, old_id = _node(tmp_path, "OLD")
    b, b_id = _node(tmp_path, "B")
    run(old, "trust", "add", b_id)
    run(b, "trust", "add", old_id, "--name", "trainer", "--role", "publish")
    huge = str((1 << 63) - 1)
    evil = tmp_path / "evil.bin"
    evil.write_bytes(os.urandom(10_000))
    run(old, "publish", str(evil), "--name", "m", "--version", huge)
    old_srv = start_server(old, tmp_path / "old.log")
    servers.append(old_srv)
    models = tmp_path / "models"
    new, new_id = _node(tmp_path, "NEW")
    run(new, "trust", "add", b_id)
    good = tmp_path / "good.bin"
    good.write_bytes(os.urandom(20_000))
    run(new, "publish", str(good), "--name", "m", "--version", "5")
    new_srv = start_server(new, tmp_path / "new.log")
    servers.append(new_srv)
    cfg = _follow_config(tmp_path / "b.toml", {old_id: old_srv.addr, new_id: new_srv.addr}, models)
    follower = start_daemon(b, tmp_path / "b.log", cfg)
    servers.append(follower)
    wait_until(lambda: _current(models) == huge, 30, "the fast-forwarded version installed")
    # Recovery: the stolen key goes, the new key is trusted to publish.
    removed = run(b, "trust", "rm", "trainer")
    assert "forgot what it signed" in removed.stdout and f"m@{huge}" in removed.stdout
    run(b, "trust", "add", new_id, "--name", "trainer2", "--role", "publish")
    wait_until(lambda: _current(models) == "5", 30, "the new key's version installed")
    assert (models / "m" / "5" / "good.bin").read_bytes() == good.read_bytes()
    doc = run_json(b, "pull", "m", "--from", new_srv.addr, "-o", str(tmp_path / "again"))
    assert (doc["version"], doc["publisher"]) == (5, new_id)
    assert [r["version"] for r in run_json(b, "ls", "--local") if r["publisher"] == old_id] == []


def test_expired_newest_version_is_refused(tmp_path: Path, servers: list[Server]) -> None:
    """A version published with --expires is refused as the newest once the
    expiry passed (exit 14, named), taken with --allow-expired, and by exact
    version with a warning; the expiry is signed, so the puller sees it."""
    a, a_id = _node(tmp_path, "A")
    b, b_id = _node(tmp_path, "B")
    run(a, "trust", "add", b_id)
    run(b, "trust", "add", a_id, "--role", "publish")
    ck = tmp_path / "m.bin"
    ck.write_bytes(os.urandom(30_000))
    published = run_json(a, "publish", str(ck), "--name", "m", "--expires", "1s")
    expires = published["expires"]
    assert isinstance(expires, int) and expires <= time.time() + 2
    bad = run(a, "publish", str(ck), "--name", "m", "--expires", "soon", check=False)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    reserved = run(a, "publish", str(ck), "--name", "m", "--meta", "p2pckpt.x=1", check=False)
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
    server = start_server(a, tmp_path / "a.log")
    servers.append(server)
    wait_until(lambda: time.time() > expires + 0.1, 5, "the wall clock to pass the expiry")
    refused = run(b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "x"), check=False)
    assert refused.returncode == 14, refused.stderr
    assert "expired at" in refused.stderr and "m@1" in refused.stderr
    assert not (tmp_path / "x").exists()
    doc = run_json(
        b, "pull", "m", "--from", server.addr, "--allow-expired", "-o", str(tmp_path / "y")
    )
    assert doc["bytes_downloaded"] == 30_000
    exact = run(b, "pull", "m@1", "--from", server.addr, "-o", str(tmp_path / "z"))
    assert "expired" in exact.stderr  # warned, not refused


def test_equivocation_within_one_pull_names_both_peers(
    tmp_path: Path, servers: list[Server]
) -> None:
    """Two valid manifests of one publisher for m@1 with different roots,
    offered at once (a stolen key, or a lying mirror): the pull refuses
    both and names both peers, instead of picking one silently."""
    a, a_id = _node(tmp_path, "A")
    twin = tmp_path / "TWIN"
    twin.mkdir(mode=0o700)
    shutil.copy2(a / KEY_FILE, twin / KEY_FILE)  # the same key, another node
    assert run(twin, "init").stdout.strip() == a_id
    no_mdns(twin)
    b, b_id = _node(tmp_path, "B")
    for seeder in (a, twin):
        run(seeder, "trust", "add", b_id)
    run(b, "trust", "add", a_id, "--role", "publish")
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    one.write_bytes(os.urandom(10_000))
    two.write_bytes(os.urandom(10_000))
    run(a, "publish", str(one), "--name", "m", "--version", "1")
    run(twin, "publish", str(two), "--name", "m", "--version", "1")
    a_srv = start_server(a, tmp_path / "a.log")
    twin_srv = start_server(twin, tmp_path / "twin.log")
    servers += [a_srv, twin_srv]
    refused = run(
        b,
        "pull",
        "m",
        "--from",
        a_srv.addr,
        "--from",
        twin_srv.addr,
        "-o",
        str(tmp_path / "x"),
        check=False,
    )
    assert refused.returncode == 7, refused.stderr
    assert "signed two different m@1" in refused.stderr
    assert a_srv.addr in refused.stderr and twin_srv.addr in refused.stderr
    assert not (tmp_path / "x").exists()
