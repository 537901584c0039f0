"""Fast republish (issue 6): only files whose size, mtime or inode changed
since they were last hashed are read again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from p2pckpt.home import Home
from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.publish import publish

OLD = time.time_ns() - 3600 * 10**9  # an hour ago: well clear of the racy window


def _write(path: Path, data: bytes, mtime_ns: int = OLD) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_unchanged_files_are_not_hashed_again(tmp_path: Path) -> None:
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    _write(ck / "a.bin", b"a" * 5000)
    _write(ck / "b.bin", b"b" * 5000)
    publish(home, ck, "m", 1)
    # Same size, same mtime, same inode, different bytes: the stat says
    # "unchanged", so a.bin's old hashes are used (this is what proves it was
    # not read); b.bin gets a new mtime and is hashed again.
    with open(ck / "a.bin", "r+b") as f:
        f.write(b"A")
    os.utime(ck / "a.bin", ns=(OLD, OLD))
    _write(ck / "b.bin", b"B" * 5000, OLD + 10**9)
    v2 = {f.path: f for f in publish(home, ck, "m", 2).files}
    assert v2["a.bin"].chunks[0].digest == chunk_hash(b"a" * 5000)
    assert v2["b.bin"].chunks[0].digest == chunk_hash(b"B" * 5000)
    # A replaced file (new inode, same size and mtime) is hashed again. (The
    # old one is kept aside so that its inode number cannot be reused.)
    (ck / "a.bin").rename(tmp_path / "a.old")
    _write(ck / "a.bin", b"Z" * 5000)
    assert (ck / "a.bin").stat().st_ino != (tmp_path / "a.old").stat().st_ino
    v3 = {f.path: f for f in publish(home, ck, "m", 3).files}
    assert v3["a.bin"].chunks[0].digest == chunk_hash(b"Z" * 5000)


def test_a_file_written_just_before_publishing_is_always_hashed_again(tmp_path: Path) -> None:
    """Its mtime is too recent to trust: a same-tick write could be hidden."""
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    now = time.time_ns()
    _write(ck / "a.bin", b"a" * 5000, now)
    publish(home, ck, "m", 1)
    with open(ck / "a.bin", "r+b") as f:
        f.write(b"A")
    os.utime(ck / "a.bin", ns=(now, now))
    v2 = publish(home, ck, "m", 2)
    assert v2.files[0].chunks[0].digest == chunk_hash(b"A" + b"a" * 4999)
