"""Every file of a folder is fsynced before the commit rename, and one
file's fsync error fails the commit for good (R-45)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.store.staging import Staging, staging_path

KEY = NodeKey.generate()


def _folder(count: int) -> tuple[Manifest, bytes, list[bytes]]:
    pieces = [os.urandom(100 + i) for i in range(count)]
    entries = tuple(
        FileEntry(f"d{i % 3}/f{i:03}.bin", len(p), (Chunk(0, len(p), chunk_hash(p)),))
        for i, p in enumerate(pieces)
    )
    order = sorted(range(count), key=lambda i: entries[i].path)
    manifest, env = sign(
        Manifest(
            "t", 1, KEY.peer_id, int(time.time()), {}, "dir", tuple(entries[i] for i in order)
        ),
        KEY,
    )
    return manifest, env, [pieces[i] for i in order]


def _spy(monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[tuple[int, str]]:
    """Record (fd, thread name) of every fsync; with ``fail_on``, the nth fails (EIO)."""
    calls: list[tuple[int, str]] = []
    real = os.fsync
    lock = threading.Lock()

    def fsync(fd: int) -> None:
        with lock:
            calls.append((fd, threading.current_thread().name))
            n = len(calls)
        if fail_on is not None and n == fail_on:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def _pulled(tmp_path: Path, count: int) -> tuple[Path, Manifest, list[bytes], Staging]:
    manifest, env, pieces = _folder(count)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    for index, piece in enumerate(pieces):
        st.write_chunk(index, piece)
    return dest, manifest, pieces, st


def test_every_file_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, manifest, pieces, st = _pulled(tmp_path, 40)
    calls = _spy(monkeypatch)
    st.commit()
    assert len(calls) >= len(pieces)  # every file (and the folders)
    for entry, piece in zip(manifest.files, pieces, strict=True):
        assert (dest / entry.path).read_bytes() == piece


def test_one_failing_fsync_among_many_fails_the_commit_and_nothing_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, _, _, st = _pulled(tmp_path, 24)
    _spy(monkeypatch, fail_on=9)
    with pytest.raises(OSError):
        st.commit()
    assert not dest.exists()
    assert not (staging_path(dest) / "journal").exists()  # never trusted again
