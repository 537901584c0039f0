"""The daemon with real processes: follow, current flip, hook, retention, restart."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.nodes import (
    Server,
    make_checkpoint,
    run,
    same_tree,
    start_daemon,
    start_server,
    wait_until,
)


@pytest.fixture
def nodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(
        b,
        "trust",
        "add",
        a_id,
        "--name",
        "nas",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    servers: list[Server] = []
    yield a, b, a_id, b_id, servers
    for s in servers:
        s.stop()


def test_follower_pulls_new_versions_flips_current_and_runs_hook(nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A new version is pulled within seconds, `current` flips, the hook sees it,
    retention keeps K; SIGTERM ends the daemon cleanly."""
    a, b, a_id, _b_id, servers = nodes
    seeder = start_server(a, tmp_path / "a.log")
    servers.append(seeder)
    models = tmp_path / "models"
    hook_out = tmp_path / "hook.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f'printf \'{{"name":"%s","version":"%s","path":"%s"}}\\n\' "$P2PCKPT_NAME"'
        f' "$P2PCKPT_VERSION" "$P2PCKPT_PATH" >> {hook_out}\n'
    )
    hook.chmod(0o755)
    with socket.socket() as probe:  # a free loopback port for the metrics endpoint
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[peer]]
id = "{a_id}"
addr = "{seeder.addr}"
[[follow]]
name = "llama-ft"
dir = "{models}"
keep = 2
hook = ["{hook}"]
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    follower = start_daemon(b, tmp_path / "b.log", cfg)
    servers.append(follower)
    current = models / "llama-ft" / "current"
    ckpts = []
    for version in (100, 200, 300):
        ck = make_checkpoint(
            tmp_path / f"ck{version}", {"model.safetensors": 2 << 20}, seed=version
        )
        ckpts.append(ck)
        run(a, "publish", str(ck), "--name", "llama-ft", "--version", str(version))
        published = time.monotonic()  # the version exists from here on

        def switched(v: int = version) -> bool:
            return os.path.islink(current) and os.readlink(current) == str(v)

        wait_until(switched, 15, f"current -> {version}")
        assert time.monotonic() - published < 5, "follower must see a new version within 5 s"
        assert same_tree(ck, current)
    # Retention runs after the flip and the hook: wait for it, then check it.
    wait_until(
        lambda: "retention name=llama-ft deleted=100" in follower.log.read_text(),
        15,
        "retention of version 100",
    )
    lines = [json.loads(x) for x in hook_out.read_text().splitlines()]
    assert [x["version"] for x in lines] == ["100", "200", "300"]
    assert lines[-1] == {
        "name": "llama-ft",
        "version": "300",
        "path": str(models / "llama-ft" / "300"),
    }
    assert sorted(p.name for p in (models / "llama-ft").iterdir()) == ["200", "300", "current"]
    held = json.loads(run(b, "ls", "--local", "--json").stdout)
    assert sorted(r["version"] for r in held) == [200, 300]  # retention forgot version 100
    status = json.loads(run(b, "status", "--json").stdout)
    assert status["peer_id"] and any(v["version"] == 300 for v in status["versions"])
    (nas,) = status["peers"]
    assert nas["id"] == a_id and nas["name"] == "nas"
    assert (nas["route"], nas["addr"], nas["inbound"]) == ("direct", seeder.addr, False)
    assert time.time() - 30 < nas["seen"] <= time.time()
    assert f"direct {seeder.addr}  seen " in run(b, "status").stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        scraped = r.read().decode()
    pulled = re.search(r"^p2pckpt_bytes_pulled_total (\S+)$", scraped, re.M)
    assert pulled and float(pulled.group(1)) >= 3 * (2 << 20)
    assert "p2pckpt_chunks_failed_verification_total 0.0" in scraped
    assert re.search(r"^p2pckpt_peers ", scraped, re.M)
    follower.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    follower.proc.wait(10)
    assert time.monotonic() - started < 5 and follower.proc.returncode == 0
    assert not (b / "run" / "control.sock").exists()


def test_push_to_two_daemons_one_refuses(nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """push waits for each target's verified result; a target without the push
    role for us refuses; the exit code is non-zero unless all verified."""
    a, b, a_id, _b_id, servers = nodes
    c = tmp_path / "C"
    c_id = run(c, "init").stdout.strip()
    run(a, "trust", "add", c_id, "--role", "pull")
    run(c, "trust", "add", a_id, "--role", "pull", "--role", "publish")  # no push role
    # (B trusts A with every role, push included.)
    for home in (b, c):
        (home / "d.toml").write_text(
            f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[follow]]
name = "llama-ft"
dir = "{home / "models"}"
"""
        )
    db = start_daemon(b, tmp_path / "b.log", b / "d.toml")
    dc = start_daemon(c, tmp_path / "c.log", c / "d.toml")
    servers += [db, dc]
    ck = make_checkpoint(tmp_path / "ck", {"model.safetensors": 3 << 20, "config.json": 100})
    run(a, "publish", str(ck), "--name", "llama-ft", "--version", "42")
    proc = run(
        a,
        "push",
        "llama-ft",
        "--to",
        db.addr,
        "--to",
        dc.addr,
        "--listen",
        "127.0.0.1:0",
        "--json",
        check=False,
    )
    assert proc.returncode == 12, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["targets"][db.addr]["ok"] is True
    assert doc["targets"][dc.addr]["ok"] is False
    assert "push" in doc["targets"][dc.addr]["message"]
    assert same_tree(ck, b / "models" / "llama-ft" / "current")
    assert not (c / "models" / "llama-ft").exists()
    assert "refused push" in dc.log.read_text()
    # B was told about C as a co-target, but B does not trust C: not dialled.
    assert "push hints skipped=1" in db.log.read_text()
    # Pushing again to B alone: already there, verified, exit 0.
    again = run(a, "push", "llama-ft@42", "--to", db.addr, "--listen", "127.0.0.1:0")
    assert again.returncode == 0 and "ok: verified llama-ft@42" in again.stdout


def test_push_shows_progress_per_target(nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """While a target pulls, push prints that target's progress (plain lines
    when not on a terminal), fed by PushProgress frames from the target."""
    a, b, _a_id, _b_id, servers = nodes
    (b / "d.toml").write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[follow]]
name = "slow"
dir = "{b / "models"}"
"""
    )
    # The pusher serves at 4 MB/s, so 8 MiB takes about two seconds.
    (a / "config.toml").write_text("[discovery]\nmdns = false\n[limits]\nupload = 4000000\n")
    db = start_daemon(b, tmp_path / "b.log", b / "d.toml")
    servers.append(db)
    ck = make_checkpoint(tmp_path / "ck", {"model.safetensors": 8 << 20})
    run(a, "publish", str(ck), "--name", "slow", "--version", "1")
    proc = run(a, "push", "slow", "--to", db.addr, "--listen", "127.0.0.1:0")
    lines = re.findall(
        rf"^{re.escape(db.addr)}: pulling ([0-9.]+) of ([0-9.]+) MB \((\d+)%\)$",
        proc.stderr,
        re.M,
    )
    assert lines, proc.stderr
    done, total, pct = lines[0]
    assert float(done) <= float(total)
    assert float(total) == round((8 << 20) / 1e6, 1) and int(pct) < 100
    assert f"{db.addr}: ok: verified slow@1" in proc.stdout
    # B last talked to A when it dialled back A's push listener, directly.
    (pusher,) = json.loads(run(b, "status", "--json").stdout)["peers"]
    assert pusher["route"] == "direct" and pusher["inbound"] is False
    assert pusher["addr"].startswith("127.0.0.1:") and pusher["addr"] != db.addr
    assert same_tree(ck, b / "models" / "slow" / "current")


def test_example_config_starts_a_daemon(tmp_path: Path) -> None:
    """deploy/config.example.toml, with paths and addresses overridden, runs a
    daemon that answers `status` and stops cleanly on SIGTERM."""
    home = tmp_path / "home"
    run(home, "init")
    watched = tmp_path / "ckpt"
    watched.mkdir()
    example = (Path(__file__).parents[2] / "deploy" / "config.example.toml").read_text()
    text = (
        example.replace("/srv/ckpt/llama-ft", str(watched))
        .replace('listen = "0.0.0.0:7450"', 'listen = "127.0.0.1:0"')
        .replace("mdns = true", "mdns = false")  # never multicast from the test host
    )
    assert str(watched) in text and 'listen = "127.0.0.1:0"' in text
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    daemon = start_server(
        home,
        tmp_path / "d.log",
        command=("--log-format", "json", "daemon", "--config", str(cfg)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )
    try:
        status = json.loads(run(home, "status", "--json").stdout)
        assert status["versions"] == [] and status["peer_id"]
        (watched / "step-7.pt").write_bytes(os.urandom(10_000))
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(10)
        assert daemon.proc.returncode == 0
    finally:
        daemon.stop()
    # One JSON object per log line, the event split from its fields.
    events = [json.loads(line) for line in daemon.log.read_text().splitlines()]
    ready = next(e for e in events if e["event"] == "daemon ready")
    assert ready["level"] == "info" and ready["logger"] == "p2pckpt.daemon"
    assert ready["fields"]["peer"] == status["peer_id"]
    stopped = run(home, "status", check=False)
    assert stopped.returncode == 11 and "no daemon running" in stopped.stderr


def test_daemon_killed_mid_pull_resumes_after_restart(nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """kill -9 during a follow pull; the restarted daemon completes it from the
    journal (re-fetching only what was not journaled) and flips current."""
    a, b, a_id, _b_id, servers = nodes
    ck = make_checkpoint(tmp_path / "ck", {"model.safetensors": 160 << 20})
    run(a, "publish", str(ck), "--name", "big", "--version", "5")
    seeder = start_server(a, tmp_path / "a.log")
    servers.append(seeder)
    models = tmp_path / "models"
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[peer]]
id = "{a_id}"
addr = "{seeder.addr}"
[[follow]]
name = "big"
dir = "{models}"
"""
    )
    journal = models / "big" / ".5.p2pckpt-partial" / "journal"
    first = start_daemon(b, tmp_path / "b1.log", cfg)
    wait_until(lambda: journal.exists() and journal.stat().st_size >= 41 + 8 * 5, 30, "journal")
    first.proc.kill()
    first.proc.wait(10)
    first.stop()
    assert not (models / "big" / "current").exists()
    journaled = (journal.stat().st_size - 41) // 8
    second = start_daemon(b, tmp_path / "b2.log", cfg)
    servers.append(second)
    current = models / "big" / "current"
    wait_until(lambda: current.is_symlink(), 60, "current after restart")
    assert same_tree(ck, current)
    log = (tmp_path / "b2.log").read_text()
    found = re.search(r"pulled name=big version=5 downloaded=(\d+) reused=(\d+)", log)
    assert found, log
    downloaded, reused = int(found.group(1)), int(found.group(2))
    assert journaled >= 5 and reused >= journaled * (4 << 20)
    assert downloaded + reused == 160 << 20


def test_daemon_does_not_publish_a_file_still_being_written(tmp_path: Path) -> None:
    """A checkpoint growing over several seconds appears in the daemon's catalog
    only after it stops changing, whole, with the step from its name."""
    home = tmp_path / "home"
    run(home, "init")
    watched = tmp_path / "ckpt"
    watched.mkdir()
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[watch]]
path = "{watched}"
name = "llama-ft"
stable_seconds = 1.5
"""
    )
    daemon = start_daemon(home, tmp_path / "d.log", cfg)
    try:
        target = watched / "llama-ft-step1200.safetensors"
        block = os.urandom(1 << 20)
        with open(target, "wb") as f:
            for _ in range(8):  # ~4 s of writing, in bursts
                f.write(block)
                f.flush()
                listed = json.loads(run(home, "ls", "--local", "--json").stdout)
                assert listed == [], "published while the writer was still writing"
                time.sleep(0.5)  # the writer's pace, not synchronisation
        wait_until(
            lambda: json.loads(run(home, "ls", "--local", "--json").stdout) != [], 20, "publication"
        )
        (entry,) = json.loads(run(home, "ls", "--local", "--json").stdout)
        assert (entry["name"], entry["version"], entry["bytes"]) == ("llama-ft", 1200, 8 << 20)
    finally:
        daemon.stop()


def test_concurrent_pushes_of_one_version_share_one_pull(nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Eight pushes of one version to one daemon at once: the daemon pulls it
    once, every pusher is told it is verified (issue 14.6)."""
    import subprocess
    import sys

    a, b, _a_id, _b_id, servers = nodes
    (b / "d.toml").write_text(
        f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[[follow]]\nname = "llama-ft"\ndir = "{b / "models"}"\n'
    )
    db = start_daemon(b, tmp_path / "b.log", b / "d.toml")
    servers.append(db)
    # A slow uplink on A, so that every push arrives while the first pull runs.
    (a / "config.toml").write_text("[discovery]\nmdns = false\n[limits]\nupload = 4000000\n")
    ck = make_checkpoint(tmp_path / "ck", {"model.safetensors": 8 << 20})
    run(a, "publish", str(ck), "--name", "llama-ft", "--version", "7")
    argv = [sys.executable, "-m", "p2pckpt", "--home", str(a), "push", "llama-ft@7"]
    argv += ["--to", db.addr, "--listen", "127.0.0.1:0", "--json"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            outs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert [code for code, _, _ in outs] == [0] * 8, [err for _, _, err in outs]
    for _, out, _ in outs:
        assert json.loads(out)["targets"][db.addr]["ok"] is True
    log = db.log.read_text()
    # The bytes came once: any push after the pull finished found it in place.
    downloads = re.findall(r"pulled name=llama-ft version=7 downloaded=(\d+)", log)
    assert [n for n in downloads if n != "0"] == [str(8 << 20)], downloads
    assert "another pull is writing" not in log
    assert same_tree(ck, b / "models" / "llama-ft" / "current")
