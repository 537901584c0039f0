"""Disk full is a state, not a crash: clear error, resumable partial (R-47)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pckpt.store.staging import staging_path
from tests.e2e.nodes import CLI, Pair, make_checkpoint, run, run_json, same_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs, unmounted at teardown."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC (bounded by its size)."""
    block = b"\0" * (1 << 16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(4096):
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_preflight_refuses_what_cannot_fit(pair: Pair, tmp_path: Path, small_fs: Path) -> None:
    """A checkpoint larger than the free space is refused up front with exit 10."""
    ckpt = make_checkpoint(tmp_path / "ck", {"model.safetensors": 120 << 20})
    run(pair.a, "publish", str(ckpt), "--name", "huge")
    server = pair.serve_a()
    proc = run(
        pair.b, "pull", "huge", "--from", server.addr, "-o", str(small_fs / "huge"), check=False
    )
    assert proc.returncode == 10, proc.stderr
    assert "GB free" in proc.stderr and "Traceback" not in proc.stderr
    assert not (small_fs / "huge").exists()


def test_enospc_mid_pull_keeps_a_resumable_partial(
    pair: Pair, tmp_path: Path, small_fs: Path
) -> None:
    """ENOSPC while writing exits 10; after space returns the same pull resumes."""
    ckpt = make_checkpoint(tmp_path / "ck", {"model.safetensors": 64 << 20})
    run(pair.a, "publish", str(ckpt), "--name", "fits")
    server = pair.serve_a()
    dest = small_fs / "fits"
    journal = small_fs / ".fits.p2pckpt-partial" / "journal"
    proc = subprocess.Popen(
        [
            *CLI,
            "--home",
            str(pair.b),
            "pull",
            "fits",
            "--from",
            server.addr,
            "-o",
            str(dest),
            "--streams",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    filler = small_fs / "filler"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.stat().st_size >= 41 + 8 * 2:
            break
        time.sleep(0.002)
    # Freeze the seeder so the pull cannot finish while the disk fills up.
    server.proc.send_signal(signal.SIGSTOP)
    try:
        assert proc.poll() is None, "pull finished before the disk could be filled"
        # Take every free byte at once: a later chunk write hits ENOSPC.
        _fill(filler)
        assert shutil.disk_usage(small_fs).free < 1 << 20
    finally:
        server.proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 10, err
    assert "free some space and run the same pull again" in err
    assert not dest.exists()
    filler.unlink()
    doc = run_json(pair.b, "pull", "fits", "--from", server.addr, "-o", str(dest))
    assert same_tree(ckpt, dest)
    assert doc["bytes_reused"] > 0
    assert doc["bytes_reused"] + doc["bytes_downloaded"] == doc["bytes_total"]


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with bytes to spare but only 64 inodes, unmounted at teardown."""
    mnt = tmp_path / "inodes"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m,nr_inodes=64", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _take_every_inode(folder: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left (bounded)."""
    made = []
    for i in range(10_000):
        try:
            (folder / f"{i:05}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return made
        made.append(folder / f"{i:05}")
    raise AssertionError("the filesystem never ran out of inodes")


def test_inode_exhaustion_exits_10_and_the_pull_resumes(
    pair: Pair, tmp_path: Path, few_inodes: Path
) -> None:
    """ENOSPC from mkdir/open with bytes to spare (no inode left) is disk full
    too: exit 10 with one line saying so, never exit 1, whether the staging
    directory itself or one of its files cannot be created; once inodes are
    free the same pull completes from the partial copy it left."""
    shards = {f"model-{i:05}.bin": 1 << 20 for i in range(4)}
    ckpt = make_checkpoint(tmp_path / "ck", {**shards, "config.json": 300})
    run(pair.a, "publish", str(ckpt), "--name", "many")
    server = pair.serve_a()
    dest = few_inodes / "many"
    fill = few_inodes / "fill"
    fill.mkdir()
    fillers = _take_every_inode(fill)
    args = ("pull", "many", "--from", server.addr, "-o", str(dest))
    proc = run(pair.b, *args, check=False)  # not even the staging directory fits
    assert proc.returncode == 10, proc.stderr
    assert "no free inodes" in proc.stderr and "run the same pull again" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not dest.exists() and not staging_path(dest).exists()
    for path in fillers[:6]:  # the directory, its lock, data/, manifest, 2 of 5 files
        path.unlink()
    proc = run(pair.b, *args, check=False)
    assert proc.returncode == 10, proc.stderr
    assert "no free inodes" in proc.stderr and "Traceback" not in proc.stderr
    assert staging_path(dest).is_dir() and not dest.exists()
    for path in fillers[6:]:
        path.unlink()
    doc = run_json(pair.b, *args)
    assert same_tree(ckpt, dest) and doc["bytes_total"] == sum(shards.values()) + 300
    assert not staging_path(dest).exists()


def test_a_full_home_exits_10_not_1(tmp_path: Path, small_fs: Path) -> None:
    """A node home (its catalog) on a full filesystem: the command fails with
    exit 10 and one line saying the filesystem is full, as a full DEST does."""
    home = small_fs / "home"
    run(home, "init")
    (home / "config.toml").write_text("[discovery]\nmdns = false\n")
    ckpt = make_checkpoint(tmp_path / "ck", {"model.bin": 300_000})
    _fill(small_fs / "filler")
    proc = run(home, "publish", str(ckpt / "model.bin"), "--name", "m", check=False)
    assert proc.returncode == 10, proc.stderr
    assert "filesystem is full" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (small_fs / "filler").unlink()
    run(home, "publish", str(ckpt / "model.bin"), "--name", "m")
