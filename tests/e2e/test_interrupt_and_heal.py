"""Issue 13, items 4 and 5, with real processes on 127.0.0.1: a CLI pull
stopped by SIGTERM stops like Ctrl-C (exit 130, one line, resumable); a
staging area someone grew, opened up or scribbled on heals on the next run
instead of failing forever, and a byte changed in it during the pull is
never committed (exit 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from p2pckpt.home import Home
from p2pckpt.store import journal as journal_format
from p2pckpt.store.staging import staging_path
from tests.e2e.nodes import CLI, Pair, Server, make_checkpoint, run, run_json, wait_until

NAME = "heal-ft"
SIZE = 40 << 20  # ten 4 MiB chunks
RATE = 4_000_000  # about one chunk a second: long enough to act mid-pull
INTERRUPTED = "p2pckpt: interrupted (SIGTERM); run the same command again to resume"


def _records(journal: Path) -> int:
    """Chunks journaled so far (41-byte header, 8 bytes a record)."""
    try:
        return max(0, (journal.stat().st_size - journal_format.HEADER_SIZE) // 8)
    except FileNotFoundError:
        return 0


def _setup(pair: Pair, tmp_path: Path) -> tuple[Path, Server, Path]:
    """A one-file checkpoint published on A and served; B's destination."""
    ckpt = make_checkpoint(tmp_path / "ck", {"model.bin": SIZE})
    run(pair.a, "publish", str(ckpt / "model.bin"), "--name", NAME)
    return ckpt / "model.bin", pair.serve_a(), tmp_path / "out" / "model.bin"


def _slow_pull(pair: Pair, server: Server, dest: Path) -> subprocess.Popen[str]:
    dest.parent.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            *CLI,
            "--home",
            str(pair.b),
            "pull",
            NAME,
            "--from",
            server.addr,
            "-o",
            str(dest),
            "--streams",
            "1",
            "--max-rate",
            str(RATE),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _terminate_mid_pull(pair: Pair, server: Server, dest: Path, chunks: int = 2) -> int:
    """Start a slow pull, SIGTERM it once ``chunks`` are journaled; check the
    clean stop and return how many chunks its journal holds."""
    journal = staging_path(dest) / "journal"
    proc = _slow_pull(pair, server, dest)
    try:
        wait_until(lambda: _records(journal) >= chunks or proc.poll() is not None, 60, "chunks")
        assert proc.poll() is None, f"pull ended early: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.splitlines() == [INTERRUPTED], err  # one line, nothing else
    assert out == ""
    assert not dest.exists()
    flushed = _records(journal)
    assert chunks <= flushed < SIZE >> 22
    return flushed


def test_sigterm_stops_a_pull_like_ctrl_c_and_the_rerun_resumes(pair: Pair, tmp_path: Path) -> None:
    """SIGTERM (systemd, docker stop, kill) mid-pull: exit 130 with one line,
    journal and chunks flushed; the rerun downloads only what was missing."""
    source, server, dest = _setup(pair, tmp_path)
    flushed = _terminate_mid_pull(pair, server, dest)
    doc = run_json(pair.b, "pull", NAME, "--from", server.addr, "-o", str(dest))
    assert dest.read_bytes() == source.read_bytes()
    assert doc["bytes_reused"] >= flushed << 22
    assert doc["bytes_downloaded"] == SIZE - doc["bytes_reused"] < SIZE


def test_a_grown_staging_file_and_a_readable_staging_dir_heal(pair: Pair, tmp_path: Path) -> None:
    """After an interrupted pull the staging file is made longer than
    declared and the staging directory readable by all: the rerun cuts the
    file back, makes the directory 0700 again, keeps the verified chunks
    and completes (before: "partial file has the wrong size" forever)."""
    source, server, dest = _setup(pair, tmp_path)
    flushed = _terminate_mid_pull(pair, server, dest)
    partial = staging_path(dest)
    with open(partial / "data" / "model.bin", "ab") as f:
        f.write(os.urandom(1 << 20))
    partial.chmod(0o755)
    proc = run(pair.b, "pull", NAME, "--from", server.addr, "-o", str(dest), "--json")
    assert dest.read_bytes() == source.read_bytes()
    assert json.loads(proc.stdout)["bytes_reused"] >= flushed << 22
    assert "wrong size" in proc.stderr and "open to other users" in proc.stderr


def test_a_staging_dir_others_could_write_is_fixed_and_started_over(
    pair: Pair, tmp_path: Path
) -> None:
    """Mode 0777 on the staging directory: the rerun makes it 0700, says so,
    trusts nothing in it (started over) and completes."""
    source, server, dest = _setup(pair, tmp_path)
    _terminate_mid_pull(pair, server, dest)
    staging_path(dest).chmod(0o777)
    proc = run(pair.b, "pull", NAME, "--from", server.addr, "-o", str(dest), "--json")
    assert dest.read_bytes() == source.read_bytes()
    assert json.loads(proc.stdout)["bytes_reused"] == 0
    assert "open to other users" in proc.stderr and "starting it over" in proc.stderr


def test_a_byte_flipped_in_staging_during_the_pull_is_never_committed(
    pair: Pair, tmp_path: Path
) -> None:
    """The black-box finding: while a pull runs, another process flips one
    byte of a chunk already written and journaled. The pull must not commit
    it or say "verified": exit 9 naming the change, DEST absent, that chunk
    out of the journal; the rerun fetches exactly that chunk."""
    source, server, dest = _setup(pair, tmp_path)
    home = Home.open(pair.a)
    entry = home.catalog.find(NAME, None)
    home.catalog.close()
    assert entry is not None
    manifest = entry.manifest()
    chunks = [c for _, _, c in manifest.iter_chunks()]
    journal = staging_path(dest) / "journal"
    proc = _slow_pull(pair, server, dest)
    try:
        wait_until(lambda: _records(journal) >= 2 or proc.poll() is not None, 60, "chunks")
        assert proc.poll() is None, f"pull ended early: {proc.communicate()}"
        written = journal_format.parse(journal.read_bytes(), manifest.root, len(chunks))
        victim = min(written)
        with open(staging_path(dest) / "data" / "model.bin", "r+b") as f:
            f.seek(chunks[victim].offset + 12345)
            byte = f.read(1)
            f.seek(chunks[victim].offset + 12345)
            f.write(bytes([byte[0] ^ 0x20]))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 9, (proc.returncode, err)
    assert "Traceback" not in err and out == ""
    assert f"chunk {victim}: " in err and "changed in the partial copy" in err
    assert not dest.exists()
    kept = journal_format.parse(journal.read_bytes(), manifest.root, len(chunks))
    assert kept == set(range(len(chunks))) - {victim}
    doc = run_json(pair.b, "pull", NAME, "--from", server.addr, "-o", str(dest))
    assert dest.read_bytes() == source.read_bytes()
    assert doc["bytes_downloaded"] == chunks[victim].length
