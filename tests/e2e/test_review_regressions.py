"""Regression tests for defects found in review (each one reproduced first)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.e2e.nodes import CLI, Pair, make_checkpoint, run, run_json, same_tree


def test_changed_small_file_then_bigger_chunk_keeps_server_alive(
    pair: Pair, tmp_path: Path
) -> None:
    """A refused (changed) chunk followed by larger chunks must not crash the seeder."""
    ckpt = make_checkpoint(tmp_path / "ck", {"config.json": 300, "model.bin": 20 << 20})
    run(pair.a, "publish", str(ckpt), "--name", "m")
    other = make_checkpoint(tmp_path / "ok", {"x.bin": 9 << 20}, seed=2)
    run(pair.a, "publish", str(other), "--name", "ok")
    (ckpt / "config.json").write_bytes(os.urandom(300))
    server = pair.serve_a()
    for _ in range(2):
        bad = run(
            pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "bad"), check=False
        )
        assert bad.returncode == 9, bad.stderr
        assert server.alive()
    run(pair.b, "pull", "ok", "--from", server.addr, "-o", str(tmp_path / "good"))
    assert same_tree(other, tmp_path / "good")
    assert server.alive()


def _limit_fds(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def test_many_files_under_a_low_fd_limit(pair: Pair, tmp_path: Path) -> None:
    """Thousands of files pull correctly with 2 streams even with 128 fds allowed."""
    sizes = {f"shard-{i:04d}.bin": 1000 + i for i in range(1200)}
    ckpt = make_checkpoint(tmp_path / "many", sizes)
    run(pair.a, "publish", str(ckpt), "--name", "many")
    server = pair.serve_a()
    proc = subprocess.run(
        [
            *CLI,
            "--home",
            str(pair.b),
            "pull",
            "many",
            "--from",
            server.addr,
            "-o",
            str(tmp_path / "got"),
            "--streams",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=lambda: _limit_fds(128),
    )
    assert proc.returncode == 0, proc.stderr
    assert same_tree(ckpt, tmp_path / "got")


def test_idle_connections_cannot_lock_out_peers(pair: Pair, tmp_path: Path) -> None:
    """Idle pre-auth connections from one source are capped; a trusted pull still works."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(100_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    # The flood comes from another loopback address (another "host").
    idle = [
        socket.create_connection(
            ("127.0.0.1", server.port), timeout=5, source_address=("127.0.0.2", 0)
        )
        for _ in range(30)
    ]
    try:
        dropped = 0
        for s in idle:
            s.settimeout(0.2)
            with contextlib.suppress(TimeoutError):  # refused: told "busy", or just closed
                dropped += s.recv(16) in (b"", b"\x00", b"\x00\x00")
        assert dropped >= 30 - 8  # at most 8 pre-auth connections per source
        started = time.monotonic()
        doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "o"))
        assert doc["bytes_total"] == 100_000
        assert time.monotonic() - started < 8  # did not wait out the idle sockets
    finally:
        for s in idle:
            s.close()
    assert server.alive()


def test_leftover_partial_after_commit_crash_is_cleaned(pair: Pair, tmp_path: Path) -> None:
    """A crash between the final rename and cleanup leaves DEST complete; a rerun
    verifies DEST, succeeds and removes the leftover partial directory."""
    ckpt = make_checkpoint(tmp_path / "ck", {"a.bin": 5 << 20, "b.json": 100})
    run(pair.a, "publish", str(ckpt), "--name", "m")
    server = pair.serve_a()
    dest = tmp_path / "out"
    run(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest))
    with sqlite3.connect(pair.b / "catalog.db") as db:
        (envelope,) = db.execute("SELECT envelope FROM versions").fetchone()
    db.close()
    leftover = tmp_path / ".out.p2pckpt-partial"
    leftover.mkdir(mode=0o700)
    (leftover / "manifest").write_bytes(envelope)
    (leftover / "lock").touch()
    doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest))
    assert doc["bytes_downloaded"] == 0 and doc["bytes_reused"] == doc["bytes_total"]
    assert not leftover.exists()
    assert same_tree(ckpt, dest)


def test_damaged_dest_is_repaired_not_reported_as_verified(pair: Pair, tmp_path: Path) -> None:
    """Pulling again onto our own copy damaged since is a repair (issue 18):
    only the damaged piece crosses the wire. A damaged copy that is not
    ours (not catalogued as pulled here) still fails (exit 2)."""
    ckpt = make_checkpoint(tmp_path / "ck", {"a.bin": 3 << 20})
    run(pair.a, "publish", str(ckpt), "--name", "m")
    server = pair.serve_a()
    dest = tmp_path / "out"
    run(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest))
    with open(dest / "a.bin", "r+b") as f:
        f.seek(12345)
        f.write(bytes(b ^ 0xFF for b in (dest / "a.bin").read_bytes()[12345:12347]))
    doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest))
    assert 0 < doc["bytes_downloaded"] <= 64 << 10
    assert same_tree(ckpt, dest)
    copy = tmp_path / "copy"
    shutil.copytree(dest, copy)  # the same bytes, but not a copy this node pulled
    with open(copy / "a.bin", "r+b") as f:
        f.seek(12345)
        f.write(bytes(b ^ 0xFF for b in (copy / "a.bin").read_bytes()[12345:12347]))
    again = run(pair.b, "pull", "m", "--from", server.addr, "-o", str(copy), check=False)
    assert again.returncode == 2 and "damaged: 'a.bin'" in again.stderr
