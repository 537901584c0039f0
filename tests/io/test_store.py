"""Catalog (real SQLite) and staging (real files) behaviour."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from p2pckpt.errors import ChunkCorrupt, ManifestError, Rollback, StoreError
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.store.catalog import Catalog
from p2pckpt.store.staging import Staging, staging_path

KEY = NodeKey.generate()


def _manifest(
    name: str, version: int, files: dict[str, bytes], chunk: int = 1000
) -> tuple[Manifest, bytes]:
    entries = []
    for path in sorted(files):
        data = files[path]
        chunks = tuple(
            Chunk(off, len(data[off : off + chunk]), chunk_hash(data[off : off + chunk]))
            for off in range(0, len(data), chunk)
        )
        entries.append(FileEntry(path, len(data), chunks))
    kind = "dir" if len(files) > 1 or "/" in next(iter(files)) else "file"
    return sign(
        Manifest(name, version, KEY.peer_id, int(time.time()), {}, kind, tuple(entries)), KEY
    )


def test_latest_never_goes_backwards(tmp_path: Path) -> None:
    """Once v5 of a publisher's name was seen, v3 offered as newest is a rollback."""
    cat = Catalog(tmp_path / "c.db")
    v5, _ = _manifest("m", 5, {"a": b"x"})
    v3, _ = _manifest("m", 3, {"a": b"y"})
    cat.note_seen(v5)
    with pytest.raises(Rollback):
        cat.check_not_rollback(v3, asked_latest=True)
    cat.check_not_rollback(v3, asked_latest=False)  # an explicit @3 is the user's choice
    cat.close()
    reopened = Catalog(tmp_path / "c.db")
    with pytest.raises(Rollback):
        reopened.check_not_rollback(v3, asked_latest=True)
    reopened.close()


def test_same_version_other_content_is_refused(tmp_path: Path) -> None:
    """Publishing different bytes under an existing name@version is an error."""
    cat = Catalog(tmp_path / "c.db")
    one, env1 = _manifest("m", 1, {"a": b"one"})
    other, env2 = _manifest("m", 1, {"a": b"two"})
    cat.add(one, env1, tmp_path, "published")
    cat.add(one, env1, tmp_path, "published")  # idempotent
    with pytest.raises(ManifestError):
        cat.add(other, env2, tmp_path, "published")
    found = cat.find("m", None)
    assert found is not None and found.root == one.root
    assert cat.next_version("m") == 2
    cat.close()


def _fill(staging: Staging, files: dict[str, bytes], chunk: int = 1000) -> None:
    index = 0
    for path in sorted(files):
        data = files[path]
        for off in range(0, len(data), chunk):
            staging.write_chunk(index, data[off : off + chunk])
            index += 1


def test_staging_commit_moves_a_whole_tree(tmp_path: Path) -> None:
    """A directory appears at DEST only on commit, complete, and staging is gone."""
    files = {"a/b.bin": os.urandom(2500), "c.json": b"{}"}
    manifest, env = _manifest("t", 1, files)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    assert st.open() == set()
    _fill(st, files)
    assert not dest.exists()
    st.commit()
    assert (dest / "a" / "b.bin").read_bytes() == files["a/b.bin"]
    assert (dest / "c.json").read_bytes() == b"{}"
    assert not staging_path(dest).exists()


def test_corrupt_chunk_is_never_written(tmp_path: Path) -> None:
    """A chunk whose hash does not match raises and is neither written nor journaled."""
    files = {"m.bin": os.urandom(3000)}
    manifest, env = _manifest("t", 1, files)
    st = Staging(tmp_path / "m.bin", manifest, env)
    st.open()
    bad = bytearray(files["m.bin"][:1000])
    bad[10] ^= 1
    with pytest.raises(ChunkCorrupt):
        st.write_chunk(0, bad)
    assert 0 not in st.done
    data = (staging_path(tmp_path / "m.bin") / "data" / "m.bin").read_bytes()
    assert data[:1000] == bytes(1000)
    st.close()


def test_resume_rehashes_what_the_journal_claims(tmp_path: Path) -> None:
    """On reopen, journaled chunks are re-hashed; a damaged one is fetched again."""
    files = {"m.bin": os.urandom(4000)}
    manifest, env = _manifest("t", 1, files)
    dest = tmp_path / "m.bin"
    st = Staging(dest, manifest, env)
    st.open()
    _fill(st, {"m.bin": files["m.bin"][:3000]})
    st.close()
    partial = staging_path(dest) / "data" / "m.bin"
    with open(partial, "r+b") as f:
        f.seek(1500)
        f.write(bytes([files["m.bin"][1500] ^ 0xFF]))  # damaged (0xff itself: 1 in 256 runs)
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 2}
    again.write_chunk(1, files["m.bin"][1000:2000])
    again.write_chunk(3, files["m.bin"][3000:])
    again.commit()
    assert dest.read_bytes() == files["m.bin"]


def test_a_new_version_resets_old_partial_state(tmp_path: Path) -> None:
    """A partial copy of another manifest is discarded, not mixed in."""
    dest = tmp_path / "m.bin"
    old, env_old = _manifest("t", 1, {"m.bin": os.urandom(2000)})
    st = Staging(dest, old, env_old)
    st.open()
    st.close()
    new_files = {"m.bin": os.urandom(2000)}
    new, env_new = _manifest("t", 2, new_files)
    st2 = Staging(dest, new, env_new)
    assert st2.open() == set()
    _fill(st2, new_files)
    st2.commit()
    assert dest.read_bytes() == new_files["m.bin"]


def test_one_writer_per_staging_set(tmp_path: Path) -> None:
    """A second pull into the same DEST is refused while the first holds the lock."""
    manifest, env = _manifest("t", 1, {"m.bin": b"abc"})
    first = Staging(tmp_path / "m.bin", manifest, env)
    first.open()
    with pytest.raises(StoreError, match="another pull"):
        Staging(tmp_path / "m.bin", manifest, env).open()
    first.close()


def test_staging_refuses_a_symlinked_tree(tmp_path: Path) -> None:
    """A symlink planted inside the partial tree is never followed (O_NOFOLLOW):
    planted while a pull runs, the write fails; found on resume, the partial
    copy starts over inside itself instead of failing every run."""
    files = {"d/m.bin": os.urandom(1000), "e.bin": b"e"}
    manifest, env = _manifest("t", 1, files)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    data = staging_path(dest) / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "d" / "m.bin").unlink()
    (data / "d").rmdir()
    (data / "d").symlink_to(outside)
    with pytest.raises(OSError):
        st.write_chunk(0, files["d/m.bin"])
    st.close()
    again = Staging(dest, manifest, env)
    assert again.open() == set()
    assert not (data / "d").is_symlink()
    _fill(again, files)
    again.commit()
    assert list(outside.iterdir()) == []
    assert (dest / "d" / "m.bin").read_bytes() == files["d/m.bin"]


def test_forget_location_drops_only_pulled_rows_under_it(tmp_path: Path) -> None:
    """Retention's catalog cleanup removes pulled versions under a path, nothing else."""
    cat = Catalog(tmp_path / "c.db")
    one, env1 = _manifest("m", 1, {"a": b"1"})
    two, env2 = _manifest("m", 2, {"a": b"2"})
    mine, env3 = _manifest("p", 1, {"a": b"3"})
    cat.add(one, env1, tmp_path / "models" / "m" / "1", "pulled")
    cat.add(two, env2, tmp_path / "models" / "m" / "10", "pulled")
    cat.add(mine, env3, tmp_path / "models" / "m" / "1" / "x", "published")
    epoch = cat.epoch()
    assert cat.forget_location(tmp_path / "models" / "m" / "1") == 1
    assert sorted((e.name, e.version) for e in cat.all()) == [("m", 2), ("p", 1)]
    assert cat.epoch() > epoch
    cat.close()


def test_publish_refuses_an_unreadable_subdirectory(tmp_path: Path) -> None:
    """A tree with a subdirectory we cannot list is an error, not a smaller checkpoint."""
    from p2pckpt.errors import ConfigError
    from p2pckpt.manifest.walk import walk

    root = tmp_path / "ck"
    (root / "shards").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "shards" / "a.bin").write_bytes(b"x")
    real_scandir = os.scandir

    def failing(path: object = ".") -> object:
        if str(path).endswith("shards"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    import unittest.mock

    with (
        unittest.mock.patch("os.scandir", failing),
        pytest.raises(ConfigError, match="cannot read"),
    ):
        walk(root)


def test_chunk_index_follows_versions_and_is_built_on_upgrade(tmp_path: Path) -> None:
    """Every chunk of a catalogued version can be found by hash, at its file
    and offset; removing the version removes its entries; a catalog from
    before the index gets it filled in when opened."""
    data = bytes(range(256)) * 10  # 2560 bytes: chunks of 1000, 1000, 560
    manifest, envelope = _manifest("m", 1, {"a/x.bin": data, "y.bin": b"y" * 10})
    cat = Catalog(tmp_path / "c.db")
    cat.add(manifest, envelope, tmp_path / "copy", "pulled")
    digests = [c.digest for _, _, c in manifest.iter_chunks()]
    found = cat.copies(digests)
    assert found[digests[1]] == [(str(tmp_path / "copy" / "a" / "x.bin"), 1000, 1000, True)]
    assert found[digests[3]] == [(str(tmp_path / "copy" / "y.bin"), 0, 10, True)]
    # an old catalog: no index, schema version 1
    cat._db.execute("DELETE FROM chunks")
    cat._db.execute("PRAGMA user_version = 1")
    cat.close()
    again = Catalog(tmp_path / "c.db")
    assert again.copies(digests) == found
    again.remove(manifest.root)
    assert again.copies(digests) == {}


def test_adopted_file_is_a_verified_hard_link_and_survives_resume(tmp_path: Path) -> None:
    """adopt() links a local file in only if it hashes to the entry (checked
    through the link); after a crash the resumed copy still accepts it, and
    commit leaves the new tree sharing the file's inode, nothing copied."""
    files = {"a/b.bin": os.urandom(2500), "c.json": b"{}"}
    manifest, env = _manifest("t", 1, files)
    old = tmp_path / "old"
    (old / "a").mkdir(parents=True)
    (old / "a" / "b.bin").write_bytes(files["a/b.bin"])
    (old / "wrong.bin").write_bytes(files["a/b.bin"][:-1] + b"!")
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    assert not st.adopt("a/b.bin", str(old / "wrong.bin"))  # one byte differs
    assert not st.adopt("a/b.bin", str(tmp_path / "missing.bin"))
    assert st.done == set()
    assert st.adopt("a/b.bin", str(old / "a" / "b.bin"))
    assert st.done == {0, 1, 2}
    st.close()  # a crash before the rest arrived
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 1, 2}
    again.write_chunk(3, b"{}")
    again.commit()
    assert (dest / "a" / "b.bin").stat().st_ino == (old / "a" / "b.bin").stat().st_ino
    assert (dest / "a" / "b.bin").read_bytes() == files["a/b.bin"]


def test_reuse_skips_a_fifo_and_foreign_files_without_blocking(tmp_path: Path) -> None:
    """A catalogued path replaced by a FIFO is skipped, not opened blocking;
    a file others may write is never hard-linked in (it is copied instead)."""
    import threading

    from p2pckpt.transfer.reuse import reuse_local

    files = {"a.bin": os.urandom(2500), "b.bin": os.urandom(1500)}
    manifest, env = _manifest("t", 1, files)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    shared = tmp_path / "shared.bin"
    shared.write_bytes(files["b.bin"])
    shared.chmod(0o666)
    copies: dict[bytes, list[tuple[str, int, int, bool]]] = {}
    for _, entry, chunk in manifest.iter_chunks():
        source = str(fifo) if entry.path == "a.bin" else str(shared)
        copies[chunk.digest] = [(source, chunk.offset, chunk.length, True)]
    st = Staging(tmp_path / "out", manifest, env)
    st.open()
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(reuse_local(st, copies)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reuse blocked on a FIFO"
    assert result == [1500] and st.done == {3, 4}  # b.bin's chunks, copied
    assert os.stat(st.path / "data" / "b.bin").st_nlink == 1  # not linked to shared.bin
