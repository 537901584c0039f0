"""Fast republish (issue 6): only files whose size, mtime, inode or ctime
changed since they were last hashed are read again."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from p2pckpt.home import Home
from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.publish import publish
from p2pckpt.store import catalog as catalog_module

MARK = b"M" * 32  # a digest no real bytes have


def _poison(home: Home, path: Path) -> None:
    """Replace the remembered chunks of ``path`` by a marker: if publish then
    reports the marker, it used the remembered chunks and did not read the file."""
    db = home.catalog._db
    (blob,) = db.execute("SELECT chunks FROM hashed WHERE path = ?", (str(path),)).fetchone()
    fake = [[o, n, MARK] for o, n, _ in msgpack.unpackb(blob)]
    db.execute("UPDATE hashed SET chunks = ? WHERE path = ?", (msgpack.packb(fake), str(path)))


def test_unchanged_files_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "RACY_NS", 0)  # the racy guard has its own test
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "a.bin").write_bytes(b"a" * 5000)
    (ck / "b.bin").write_bytes(b"b" * 5000)
    publish(home, ck, "m", 1)
    _poison(home, ck / "a.bin")
    _poison(home, ck / "b.bin")
    # b.bin is rewritten with the same size and its old mtime put back: its
    # ctime still moved, so it is read again; a.bin is untouched and is not.
    st = (ck / "b.bin").stat()
    (ck / "b.bin").write_bytes(b"B" * 5000)
    os.utime(ck / "b.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    v2 = {f.path: f for f in publish(home, ck, "m", 2).files}
    assert v2["a.bin"].chunks[0].digest == MARK
    assert v2["b.bin"].chunks[0].digest == chunk_hash(b"B" * 5000)


def test_a_file_written_just_before_publishing_is_not_remembered(tmp_path: Path) -> None:
    """Its timestamps are too recent to trust (a same-tick write could hide)."""
    home, _ = Home.init(tmp_path / "home")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "a.bin").write_bytes(b"a" * 5000)
    publish(home, ck, "m", 1)
    rows = home.catalog._db.execute("SELECT count(*) FROM hashed").fetchone()[0]
    assert rows == 0
