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
