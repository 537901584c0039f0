"""Real processes over 127.0.0.1: publish, serve, pull, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.nodes import CLI, Pair, make_checkpoint, run, run_json, same_tree

SHARDS = {
    "model-00001-of-00003.safetensors": 9_000_000,
    "model-00002-of-00003.safetensors": 7_500_001,
    "model-00003-of-00003.safetensors": 123,
    "model.safetensors.index.json": 2_000,
    "config.json": 300,
    "tokenizer/vocab.json": 50_000,
}


def test_directory_pull_matches_byte_for_byte(pair: Pair, tmp_path: Path) -> None:
    """A sharded directory pulled over 3 streams is identical and reported in JSON."""
    ckpt = make_checkpoint(tmp_path / "ckpt", SHARDS)
    pub = run_json(
        pair.a,
        "publish",
        str(ckpt),
        "--name",
        "llama-ft",
        "--version",
        "7",
        "--meta",
        "base=llama",
        "--meta",
        "step=7000",
    )
    assert pub["version"] == 7 and pub["files"] == len(SHARDS)
    server = pair.serve_a()
    dest = tmp_path / "out" / "llama"
    doc = run_json(
        pair.b, "pull", "llama-ft", "--from", server.addr, "-o", str(dest), "--streams", "3"
    )
    assert same_tree(ckpt, dest)
    total = sum(SHARDS.values())
    assert doc["name"] == "llama-ft" and doc["version"] == 7
    assert doc["bytes_total"] == total == doc["bytes_downloaded"]
    assert doc["bytes_reused"] == 0 and doc["dest"] == str(dest)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    listed = run_json(pair.b, "ls", "--local")
    assert [(r["name"], r["version"], r["origin"]) for r in listed] == [("llama-ft", 7, "pulled")]


def test_single_file_and_explicit_version(pair: Pair, tmp_path: Path) -> None:
    """NAME alone takes the newest; NAME@V takes exactly V; a file lands as a file."""
    f1 = tmp_path / "v1.pt"
    f1.write_bytes(os.urandom(300_000))
    f2 = tmp_path / "v2.pt"
    f2.write_bytes(os.urandom(200_000))
    run(pair.a, "publish", str(f1), "--name", "tiny")
    run(pair.a, "publish", str(f2), "--name", "tiny")
    server = pair.serve_a()
    remote = run_json(pair.b, "ls", "--peer", server.addr)
    assert sorted(r["version"] for r in remote) == [1, 2]
    newest = run_json(pair.b, "pull", "tiny", "--from", server.addr, "-o", str(tmp_path / "n.pt"))
    assert newest["version"] == 2
    assert (tmp_path / "n.pt").read_bytes() == f2.read_bytes()
    old = run_json(pair.b, "pull", "tiny@1", "--from", server.addr, "-o", str(tmp_path / "o.pt"))
    assert old["version"] == 1
    assert (tmp_path / "o.pt").read_bytes() == f1.read_bytes()


def test_user_errors_are_one_line_with_exit_codes(pair: Pair, tmp_path: Path) -> None:
    """Unknown name, occupied DEST, unreachable peer: one line on stderr, non-zero exit."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(10_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    missing = run(pair.b, "pull", "nope", "--from", server.addr, check=False)
    assert missing.returncode == 3 and "no checkpoint nope" in missing.stderr
    occupied = tmp_path / "occupied"
    occupied.write_text("mine")
    busy = run(pair.b, "pull", "m", "--from", server.addr, "-o", str(occupied), check=False)
    assert busy.returncode == 2 and "already exists" in busy.stderr
    assert occupied.read_text() == "mine"
    server.stop()
    gone = run(pair.b, "pull", "m", "--from", server.addr, check=False)
    assert gone.returncode == 4 and "connection refused" in gone.stderr
    for proc in (missing, busy, gone):
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_kill9_mid_pull_then_resume(pair: Pair, tmp_path: Path) -> None:
    """After kill -9 the same pull resumes, re-fetching at most the chunks in flight."""
    ckpt = make_checkpoint(tmp_path / "big", {"model.safetensors": 160 << 20})
    run(pair.a, "publish", str(ckpt), "--name", "big")
    server = pair.serve_a()
    dest = tmp_path / "got"
    partial = tmp_path / ".got.p2pckpt-partial"
    journal = partial / "journal"
    args = [
        *CLI,
        "--home",
        str(pair.b),
        "pull",
        "big",
        "--from",
        server.addr,
        "-o",
        str(dest),
        "--streams",
        "2",
        "--json",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # Kill once some chunks are journaled (41-byte header, 8 bytes per chunk).
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.stat().st_size >= 41 + 8 * 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "pull finished before it could be killed; grow the file"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not dest.exists(), "DEST must never exist half-written"
    journaled = (journal.stat().st_size - 41) // 8
    assert journaled >= 5
    doc = json.loads(
        run(
            pair.b,
            "pull",
            "big",
            "--from",
            server.addr,
            "-o",
            str(dest),
            "--streams",
            "2",
            "--json",
        ).stdout
    )
    assert same_tree(ckpt, dest)
    assert not partial.exists()
    chunk = 4 << 20
    assert doc["bytes_reused"] >= journaled * chunk
    assert doc["bytes_downloaded"] + doc["bytes_reused"] == doc["bytes_total"]
