"""Streaming publish (issue 21) with real processes: a publisher daemon
watching a folder a trainer writes into (``stream = true``), a follower
daemon prefetching finished shards, committing only the finished version."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.nodes import Server, run, same_tree, start_daemon, wait_until
from tests.e2e.shard_writer import shard_name

SHARD = 3 << 20
ROOT = Path(__file__).resolve().parents[2]


WRITERS: list[subprocess.Popen[str]] = []


def _write(folder: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.shard_writer",
            str(folder),
            "--shard-bytes",
            str(SHARD),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    WRITERS.append(proc)
    return proc


@pytest.fixture
def pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A publisher daemon A watching ``ckpts/`` with streaming on, and a
    follower daemon B following its name into ``models/``."""
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--name", "nas", "--role", "pull", "--role", "publish")
    ckpts, models = tmp_path / "ckpts", tmp_path / "models"
    ckpts.mkdir()
    acfg = tmp_path / "a.toml"
    acfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[watch]]
path = "{ckpts}"
name = "llama"
complete = "index"
stream = true
"""
    )
    servers: list[Server] = [start_daemon(a, tmp_path / "a.log", acfg)]
    bcfg = tmp_path / "b.toml"
    bcfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[peer]]
id = "{a_id}"
addr = "{servers[0].addr}"
[[follow]]
name = "llama"
dir = "{models}"
hook = ["{sys.executable}", "-c", "open('{tmp_path / "hook.txt"}', 'a').write('ran ')"]
"""
    )
    servers.append(start_daemon(b, tmp_path / "b.log", bcfg))
    yield a, b, ckpts, models, servers
    for s in servers:
        s.stop()
    while WRITERS:
        proc = WRITERS.pop()
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _prefetched(server: Server, files: int) -> bool:
    return (
        re.search(
            rf"prefetched name=llama version=100 in_progress=\d+ files={files} ",
            server.log.read_text(),
        )
        is not None
    )


def _pulled_downloaded(server: Server) -> int:
    found = re.search(r"pulled name=llama version=100 downloaded=(\d+)", server.log.read_text())
    assert found, "the finished version was pulled"
    return int(found.group(1))


def _nothing_installed(a: Path, b: Path, models: Path) -> None:
    """No version committed anywhere: not in either catalog, no version
    directory, no ``current``, no hook run."""
    assert json.loads(run(a, "ls", "--local", "--json").stdout) == []
    assert json.loads(run(b, "ls", "--local", "--json").stdout) == []
    folder = models / "llama"
    assert not (folder / "current").exists() and not (folder / "100").exists()
    assert [p.name for p in folder.iterdir()] == [".100.p2pckpt-partial"]


def test_three_of_four_shards_pulled_before_the_fourth_is_written(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, ckpts, models, (_seeder, follower) = pair
    step = ckpts / "step-100"
    writer = _write(step, "--last", "3")
    assert writer.wait(60) == 0
    # The three finished shards reach the follower while the 4th is not even begun.
    wait_until(lambda: _prefetched(follower, 3), 30, "three shards prefetched")
    staged = models / "llama" / ".100.p2pckpt-partial" / "data"
    assert sorted(p.name for p in staged.iterdir()) == [shard_name(i, 4) for i in (1, 2, 3)]
    _nothing_installed(a, b, models)  # never installed, never current, never listed
    assert not (tmp_path / "hook.txt").exists()
    writer = _write(step, "--first", "4", "--index")
    assert writer.wait(60) == 0
    current = models / "llama" / "current"
    wait_until(lambda: os.path.islink(current), 30, "current -> 100")
    assert os.readlink(current) == "100" and same_tree(step, current)
    # Only the 4th shard and the index crossed the network for the finished version.
    assert _pulled_downloaded(follower) < SHARD + (64 << 10)
    wait_until(lambda: (tmp_path / "hook.txt").exists(), 30, "the hook")
    assert (tmp_path / "hook.txt").read_text() == "ran "
    assert run(b, "verify", str(models / "llama" / "100")).returncode == 0


def test_trainer_killed_mid_write_commits_nothing_partial_reused(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, ckpts, models, (seeder, follower) = pair
    step = ckpts / "step-100"
    writer = _write(step, "--stall-at", str(3 * SHARD + SHARD // 2))
    assert writer.stdout is not None
    while (line := writer.stdout.readline()) and line.strip() != "stalled":
        pass
    wait_until(lambda: _prefetched(follower, 3), 30, "three shards prefetched")
    writer.send_signal(signal.SIGKILL)  # the trainer dies half-way through shard 4
    writer.wait(10)
    _nothing_installed(a, b, models)
    assert "offered in progress name=llama version=100 files=3 " in seeder.log.read_text()
    # The job restarts from its last step and writes the same files again.
    writer = _write(step, "--index")
    assert writer.wait(60) == 0
    current = models / "llama" / "current"
    wait_until(lambda: os.path.islink(current), 30, "current -> 100")
    assert same_tree(step, current)
    # Shards 1-3 came from the partial copy the dead trainer's run left.
    assert _pulled_downloaded(follower) < SHARD + (64 << 10)
