"""The daemon with real processes: follow, current flip, hook, retention, restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.nodes import Server, make_checkpoint, run, same_tree, start_server


def _daemon(home: Path, log: Path, config: Path) -> Server:
    return start_server(
        home,
        log,
        command=("daemon", "--config", str(config)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def nodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--name", "nas")
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
"""
    )
    follower = _daemon(b, tmp_path / "b.log", cfg)
    servers.append(follower)
    current = models / "llama-ft" / "current"
    ckpts = []
    for version in (100, 200, 300):
        ck = make_checkpoint(
            tmp_path / f"ck{version}", {"model.safetensors": 2 << 20}, seed=version
        )
        ckpts.append(ck)
        published = time.monotonic()
        run(a, "publish", str(ck), "--name", "llama-ft", "--version", str(version))
        _wait(
            lambda v=version: os.path.islink(current) and os.readlink(current) == str(v),
            15,
            f"current -> {version}",
        )
        assert time.monotonic() - published < 5, "follower must see a new version within 5 s"
        assert same_tree(ck, current)
    lines = [json.loads(x) for x in hook_out.read_text().splitlines()]
    assert [x["version"] for x in lines] == ["100", "200", "300"]
    assert lines[-1] == {
        "name": "llama-ft",
        "version": "300",
        "path": str(models / "llama-ft" / "300"),
    }
    assert sorted(p.name for p in (models / "llama-ft").iterdir()) == ["200", "300", "current"]
    status = json.loads(run(b, "status", "--json").stdout)
    assert status["peer_id"] and any(v["version"] == 300 for v in status["versions"])
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
    db = _daemon(b, tmp_path / "b.log", b / "d.toml")
    dc = _daemon(c, tmp_path / "c.log", c / "d.toml")
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
    # Pushing again to B alone: already there, verified, exit 0.
    again = run(a, "push", "llama-ft@42", "--to", db.addr, "--listen", "127.0.0.1:0")
    assert again.returncode == 0 and "ok: verified llama-ft@42" in again.stdout
