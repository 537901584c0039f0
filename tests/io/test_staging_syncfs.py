"""Many small files are made durable with one syncfs, not one fsync each;
a failing syncfs fails the commit as a failing fsync does (R-45)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

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


def _spy(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    calls: list[int] = []
    real = staging_mod.syncfs

    def syncfs(fd: int) -> None:
        calls.append(fd)
        if fail:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(staging_mod, "syncfs", syncfs)
    return calls


def test_a_folder_of_many_files_is_committed_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    manifest, env, pieces = _folder(SYNCFS_AFTER * 2)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    for index, piece in enumerate(pieces):
        st.write_chunk(index, piece)
    st.commit()
    assert calls, "syncfs was not used"
    assert len(fsyncs) < len(pieces)  # not one fsync per file
    for entry, piece in zip(manifest.files, pieces, strict=True):
        assert (dest / entry.path).read_bytes() == piece


def test_a_failing_syncfs_fails_the_commit_and_nothing_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, env, pieces = _folder(SYNCFS_AFTER + 4)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    for index, piece in enumerate(pieces):
        st.write_chunk(index, piece)
    _spy(monkeypatch, fail=True)
    with pytest.raises(OSError):
        st.commit()
    assert not dest.exists()
    assert not (staging_path(dest) / "journal").exists()  # never trusted again


def test_a_few_files_are_still_fsynced_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch)
    manifest, env, pieces = _folder(3)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    for index, piece in enumerate(pieces):
        st.write_chunk(index, piece)
    st.commit()
    assert calls == []
    assert sorted(p.name for p in dest.rglob("*.bin")) == [f"f{i:03}.bin" for i in range(3)]
