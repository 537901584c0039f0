"""Every file of a folder is durable before the commit rename: an fsync each,
or for many files one syncfs where syncfs reports errors as fsync does
(fs/sync.py). One file's fsync error, or the syncfs's, fails the commit for
good (R-45)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from p2pckpt.fs import sync
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.store import staging as staging_mod
from p2pckpt.store.staging import SYNCFS_AFTER, Staging, staging_path

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


def _syncfs(monkeypatch: pytest.MonkeyPatch, trusted: bool = True, fail: bool = False) -> list[int]:
    """Say whether syncfs is trusted here (the CI machine's filesystem may
    differ) and record its calls; with ``fail`` each fails (EIO)."""
    calls: list[int] = []

    def syncfs(fd: int) -> None:
        calls.append(fd)
        if fail:
            raise OSError(5, "Input/output error")
        sync.syncfs(fd)

    monkeypatch.setattr(staging_mod, "syncfs_trusted", lambda fd: trusted)
    monkeypatch.setattr(staging_mod, "syncfs", syncfs)
    return calls


def test_a_few_files_are_each_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs_calls = _syncfs(monkeypatch)
    dest, manifest, pieces, st = _pulled(tmp_path, SYNCFS_AFTER)
    calls = _spy(monkeypatch)
    st.commit()
    assert syncfs_calls == []
    assert len(calls) >= len(pieces)  # every file (and the folders)
    for entry, piece in zip(manifest.files, pieces, strict=True):
        assert (dest / entry.path).read_bytes() == piece


def test_many_files_are_made_durable_by_one_syncfs_where_it_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs_calls = _syncfs(monkeypatch)
    dest, manifest, pieces, st = _pulled(tmp_path, 3 * SYNCFS_AFTER)
    calls = _spy(monkeypatch)
    st.commit()
    assert len(syncfs_calls) == 1
    assert len(calls) < 4  # not one per file: the staging folder and DEST's parent
    for entry, piece in zip(manifest.files, pieces, strict=True):
        assert (dest / entry.path).read_bytes() == piece


def test_where_syncfs_is_not_trusted_many_files_are_each_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs_calls = _syncfs(monkeypatch, trusted=False)
    dest, _, pieces, st = _pulled(tmp_path, 3 * SYNCFS_AFTER)
    calls = _spy(monkeypatch)
    st.commit()
    assert syncfs_calls == [] and len(calls) >= len(pieces)
    assert dest.is_dir()


def test_a_failing_syncfs_fails_the_commit_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A syncfs error is final, as an fsync error is (R-45): no retry by
    fsyncing each file afresh (that could miss an error whose inode is gone),
    nothing renamed, the journal never trusted again."""
    syncfs_calls = _syncfs(monkeypatch, fail=True)
    dest, _, _, st = _pulled(tmp_path, 3 * SYNCFS_AFTER)
    calls = _spy(monkeypatch)
    with pytest.raises(OSError):
        st.commit()
    assert len(syncfs_calls) == 1 and len(calls) <= 1  # the folder, once the journal is gone
    assert not dest.exists()
    assert not (staging_path(dest) / "journal").exists()


def test_one_failing_fsync_among_many_fails_the_commit_and_nothing_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _syncfs(monkeypatch, trusted=False)
    dest, _, _, st = _pulled(tmp_path, 24)
    _spy(monkeypatch, fail_on=9)
    with pytest.raises(OSError):
        st.commit()
    assert not dest.exists()
    assert not (staging_path(dest) / "journal").exists()  # never trusted again


def test_a_resumed_partial_copy_is_fsynced_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes written by an earlier run may have failed writeback before this
    run's syncfs descriptor was opened: syncfs would not report that."""
    syncfs_calls = _syncfs(monkeypatch)
    manifest, env, pieces = _folder(3 * SYNCFS_AFTER)
    dest = tmp_path / "out"
    first = Staging(dest, manifest, env)
    first.open()
    for index, piece in enumerate(pieces[:10]):
        first.write_chunk(index, piece)
    first.close()  # killed here, say
    st = Staging(dest, manifest, env)
    st.open()
    assert st.resumed
    for index, piece in enumerate(pieces[10:], start=10):
        st.write_chunk(index, piece)
    calls = _spy(monkeypatch)
    syncfs_calls.clear()
    st.commit()
    assert syncfs_calls == [] and len(calls) >= len(pieces)


def test_the_flusher_makes_many_dirty_files_durable_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs_calls = _syncfs(monkeypatch)
    _, _, _, st = _pulled(tmp_path, 3 * SYNCFS_AFTER)
    datasyncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (datasyncs.append(fd), real(fd))[1])
    st.sync()
    assert len(syncfs_calls) == 1 and datasyncs == []
    st.close()
