"""A partial copy that heals (issue 13, item 4): whatever an earlier run, a
crash or someone else left in the staging area costs at most a re-fetch,
never a pull that fails on every rerun, and nothing changed after it was
verified is ever committed. Real files, real modes, real ctimes."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from p2pckpt.errors import ChunkCorrupt, StoreError
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.store import journal
from p2pckpt.store.partial_files import PartialFiles
from p2pckpt.store.staging import Staging, staging_path

KEY = NodeKey.generate()
CHUNK = 1000


def _manifest(files: dict[str, bytes]) -> tuple[Manifest, bytes]:
    entries = []
    for path in sorted(files):
        data = files[path]
        chunks = tuple(
            Chunk(off, len(data[off : off + CHUNK]), chunk_hash(data[off : off + CHUNK]))
            for off in range(0, len(data), CHUNK)
        )
        entries.append(FileEntry(path, len(data), chunks))
    kind = "dir" if len(files) > 1 or "/" in next(iter(files)) else "file"
    return sign(Manifest("t", 1, KEY.peer_id, int(time.time()), {}, kind, tuple(entries)), KEY)


def _pieces(files: dict[str, bytes]) -> list[bytes]:
    """Every chunk's bytes, in manifest order."""
    return [
        files[path][off : off + CHUNK]
        for path in sorted(files)
        for off in range(0, len(files[path]), CHUNK)
    ]


def _write(staging: Staging, pieces: list[bytes], indices: range | list[int] | set[int]) -> None:
    for index in sorted(indices):
        staging.write_chunk(index, pieces[index])


def _flip(path: Path, offset: int) -> None:
    """What another process does to one byte of a file it can write."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _journaled(dest: Path, manifest: Manifest) -> set[int]:
    raw = (staging_path(dest) / "journal").read_bytes()
    return journal.parse(raw, manifest.root, manifest.chunk_count)


def _interrupted(
    tmp_path: Path, files: dict[str, bytes], indices: range
) -> tuple[Path, Manifest, bytes, list[bytes]]:
    """A pull that wrote ``indices`` and stopped (flushed, as Ctrl-C leaves it)."""
    manifest, env = _manifest(files)
    dest = tmp_path / ("out" if manifest.kind == "dir" else "m.bin")
    pieces = _pieces(files)
    st = Staging(dest, manifest, env)
    assert st.open() == set()
    _write(st, pieces, indices)
    st.close()
    return dest, manifest, env, pieces


# -- files of a partial copy being resumed ------------------------------------------


def test_a_partial_file_longer_than_declared_is_cut_back_and_resumed(tmp_path: Path) -> None:
    """Bytes appended to a staging file made every rerun fail ("wrong size");
    now the file is truncated to its declared size, the journal's claims are
    re-hashed (a damaged one is fetched again) and the pull completes."""
    files = {"m.bin": os.urandom(4 * CHUNK + 10)}
    dest, manifest, env, pieces = _interrupted(tmp_path, files, range(3))
    partial = staging_path(dest) / "data" / "m.bin"
    _flip(partial, CHUNK + 7)  # chunk 1 damaged as well
    with open(partial, "ab") as f:
        f.write(os.urandom(5000))
    for _attempt in range(2):  # it heals once, not once per run
        again = Staging(dest, manifest, env)
        assert again.open() == {0, 2}
        assert partial.stat().st_size == len(files["m.bin"])
        again.close()
    again = Staging(dest, manifest, env)
    missing = set(range(len(pieces))) - again.open()
    _write(again, pieces, missing)
    again.commit()
    assert dest.read_bytes() == files["m.bin"]


def test_a_shorter_or_missing_partial_file_heals(tmp_path: Path) -> None:
    """A staging file cut short keeps what still hashes; one deleted (with its
    directory) is created again; the journal's other claims stand."""
    files = {"a/x.bin": os.urandom(3 * CHUNK), "b.bin": os.urandom(2 * CHUNK), "c.bin": b"c"}
    dest, manifest, env, pieces = _interrupted(tmp_path, files, range(6))
    data = staging_path(dest) / "data"
    os.truncate(data / "b.bin", CHUNK + 1)  # b.bin = chunks 3, 4: chunk 4 is lost
    (data / "a" / "x.bin").unlink()  # chunks 0..2
    (data / "a").rmdir()
    again = Staging(dest, manifest, env)
    assert again.open() == {3, 5}
    assert (data / "a" / "x.bin").stat().st_size == 3 * CHUNK
    assert (data / "b.bin").stat().st_size == 2 * CHUNK
    _write(again, pieces, {0, 1, 2, 4})
    again.commit()
    for path, content in files.items():
        assert (dest / path).read_bytes() == content


def test_something_else_in_a_partial_files_place_is_replaced(tmp_path: Path) -> None:
    """A second hard link, a FIFO or a wrong mode found on resume: the file
    is replaced by a fresh one of ours (or given back 0600) without blocking
    and without writing through the link."""
    files = {"a.bin": os.urandom(2 * CHUNK), "b.bin": os.urandom(2 * CHUNK), "c.bin": b"c" * 9}
    dest, manifest, env, pieces = _interrupted(tmp_path, files, range(5))
    data = staging_path(dest) / "data"
    elsewhere = tmp_path / "elsewhere"
    os.link(data / "a.bin", elsewhere)  # someone holds a second name for our bytes
    (data / "b.bin").unlink()
    os.mkfifo(data / "b.bin")
    (data / "c.bin").chmod(0o666)
    again = Staging(dest, manifest, env)
    assert again.open() == {4}  # c.bin kept; a.bin and b.bin start over
    for name in ("a.bin", "b.bin", "c.bin"):
        st = (data / name).stat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        assert stat.S_IMODE(st.st_mode) == 0o600
    _write(again, pieces, range(4))
    again.commit()
    assert elsewhere.read_bytes() == files["a.bin"]  # the old inode, untouched since
    assert os.stat(elsewhere).st_ino != (dest / "a.bin").stat().st_ino
    for path, content in files.items():
        assert (dest / path).read_bytes() == content


def test_an_adopted_file_whose_copy_changed_is_never_written_through(tmp_path: Path) -> None:
    """A file hard-linked from an older local copy, whose bytes changed there
    before the commit, is replaced by a file of our own on resume: the
    re-fetched chunks never land in the other copy."""
    files = {"a.bin": os.urandom(3 * CHUNK), "c.json": b"{}"}
    manifest, env = _manifest(files)
    old = tmp_path / "old.bin"
    old.write_bytes(files["a.bin"])
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    assert st.adopt("a.bin", str(old))
    st.close()
    _flip(old, 1500)  # the user edits the old copy (chunk 1)
    again = Staging(dest, manifest, env)
    assert again.open() == set()  # its good chunks sit in their inode: fetched again
    assert (staging_path(dest) / "data" / "a.bin").stat().st_ino != old.stat().st_ino
    _write(again, _pieces(files), {0, 1, 2, 3})
    again.commit()
    assert (dest / "a.bin").read_bytes() == files["a.bin"]
    assert old.read_bytes() != files["a.bin"]  # their edit stays theirs


# -- the staging directory itself --------------------------------------------------


def test_a_staging_dir_others_could_write_is_fixed_and_started_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode 0777 on our own staging directory: made 0700 again, logged, and
    nothing in it trusted (anyone could have swapped what it held)."""
    files = {"m.bin": os.urandom(3 * CHUNK)}
    dest, manifest, env, pieces = _interrupted(tmp_path, files, range(2))
    partial = staging_path(dest)
    partial.chmod(0o777)
    again = Staging(dest, manifest, env)
    with caplog.at_level(logging.WARNING, logger="p2pckpt.staging"):
        assert again.open() == set()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o700
    assert "open to other users" in caplog.text and "mode=777" in caplog.text
    _write(again, pieces, range(3))
    again.commit()
    assert dest.read_bytes() == files["m.bin"]


def test_a_staging_dir_others_could_only_read_is_fixed_and_kept(tmp_path: Path) -> None:
    """Mode 0755: nobody else could change anything inside, so the mode is
    fixed and the verified chunks are kept."""
    files = {"m.bin": os.urandom(3 * CHUNK)}
    dest, manifest, env, _ = _interrupted(tmp_path, files, range(2))
    staging_path(dest).chmod(0o755)
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 1}
    assert stat.S_IMODE(staging_path(dest).stat().st_mode) == 0o700
    again.close()


def test_a_staging_dir_that_is_a_link_or_not_ours_is_refused(tmp_path: Path) -> None:
    """Never followed, never chmod-ed: a symlink in the staging directory's
    place, or a directory of another user, is refused and left as it is."""
    files = {"m.bin": os.urandom(CHUNK)}
    manifest, env = _manifest(files)
    dest = tmp_path / "m.bin"
    target = tmp_path / "elsewhere"
    target.mkdir()
    target.chmod(0o777)
    staging_path(dest).symlink_to(target)
    with pytest.raises(StoreError, match="not a directory"):
        Staging(dest, manifest, env).open()
    assert list(target.iterdir()) == [] and stat.S_IMODE(target.stat().st_mode) == 0o777
    if os.geteuid() != 0:
        return  # giving a directory away needs root
    staging_path(dest).unlink()
    staging_path(dest).mkdir()
    staging_path(dest).chmod(0o777)
    os.chown(staging_path(dest), 4242, 4242)
    with pytest.raises(StoreError, match="not ours"):
        Staging(dest, manifest, env).open()
    assert stat.S_IMODE(staging_path(dest).stat().st_mode) == 0o777
    assert list(staging_path(dest).iterdir()) == []


# -- read back before commit -------------------------------------------------------


def test_a_byte_flipped_in_a_written_chunk_during_a_fresh_pull_is_not_committed(
    tmp_path: Path,
) -> None:
    """Another process flips a byte of a chunk already written while the pull
    goes on writing the same file: the ctime tripwire sees it at the next
    write, the file is read back before the commit, the chunk is dropped
    from the journal and ChunkCorrupt (exit 9) is raised; the rerun
    fetches only that chunk."""
    files = {"m.bin": os.urandom(5 * CHUNK)}
    manifest, env = _manifest(files)
    dest = tmp_path / "m.bin"
    pieces = _pieces(files)
    st = Staging(dest, manifest, env)
    st.open()
    _write(st, pieces, range(3))
    _flip(staging_path(dest) / "data" / "m.bin", CHUNK + 3)  # chunk 1
    _write(st, pieces, range(3, 5))
    with pytest.raises(ChunkCorrupt) as caught:
        st.commit()
    assert caught.value.index == 1 and caught.value.exit_code == 9
    assert "changed in the partial copy" in str(caught.value)
    assert st.reread == len(files["m.bin"])
    st.close()
    assert not dest.exists()
    assert _journaled(dest, manifest) == {0, 2, 3, 4}
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 2, 3, 4}
    _write(again, pieces, {1})
    again.commit()
    assert dest.read_bytes() == files["m.bin"]


def test_a_file_changed_after_its_last_write_is_read_back(tmp_path: Path) -> None:
    """A finished file of a fresh pull changed (a flipped byte) or grown
    before the commit: a flip is refused, growth is cut back and, once the
    read-back matches, committed exactly; an untouched fresh pull reads
    nothing back."""
    files = {"a.bin": os.urandom(2 * CHUNK), "b.bin": os.urandom(2 * CHUNK)}
    manifest, env = _manifest(files)
    pieces = _pieces(files)
    clean = Staging(tmp_path / "clean", manifest, env)
    clean.open()
    _write(clean, pieces, range(4))
    clean.commit()
    assert clean.reread == 0
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    _write(st, pieces, range(4))
    with open(staging_path(dest) / "data" / "b.bin", "ab") as f:
        f.write(b"trailing")
    st.commit()
    assert st.reread == 2 * CHUNK  # b.bin only
    assert (dest / "b.bin").read_bytes() == files["b.bin"]
    dest2 = tmp_path / "out2"
    st2 = Staging(dest2, manifest, env)
    st2.open()
    _write(st2, pieces, range(4))
    _flip(staging_path(dest2) / "data" / "a.bin", 10)
    with pytest.raises(ChunkCorrupt) as caught:
        st2.commit()
    assert caught.value.index == 0
    st2.close()
    assert _journaled(dest2, manifest) == {1, 2, 3}


def test_a_resumed_pull_reads_every_chunk_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a resumed pull everything is read back before the commit, chunks
    of the earlier run and of this one, whatever the tripwire says: a
    change it missed (simulated: the tripwire is switched off) is still
    never committed."""
    files = {"m.bin": os.urandom(4 * CHUNK)}
    dest, manifest, env, pieces = _interrupted(tmp_path, files, range(2))
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 1}
    assert again.resumed
    _write(again, pieces, range(2, 4))
    monkeypatch.setattr(PartialFiles, "untouched", lambda self, relpath, st: True)
    _flip(staging_path(dest) / "data" / "m.bin", 3 * CHUNK + 1)  # this run's chunk 3
    with pytest.raises(ChunkCorrupt) as caught:
        again.commit()
    assert caught.value.index == 3
    assert again.reread == len(files["m.bin"])
    again.close()
    monkeypatch.undo()
    last = Staging(dest, manifest, env)
    assert last.open() == {0, 1, 2}
    _write(last, pieces, {3})
    last.commit()
    assert last.reread == len(files["m.bin"])
    assert dest.read_bytes() == files["m.bin"]


def test_a_partial_file_swapped_for_a_link_mid_pull_is_never_committed(tmp_path: Path) -> None:
    """A staging file replaced during the pull by a symlink to a file with
    the right bytes: not followed, not committed (ChunkCorrupt, its chunks
    out of the journal); the rerun puts a file of ours back and completes."""
    files = {"a.bin": os.urandom(2 * CHUNK), "b.bin": os.urandom(2 * CHUNK)}
    manifest, env = _manifest(files)
    pieces = _pieces(files)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    _write(st, pieces, range(4))
    decoy = tmp_path / "decoy.bin"
    decoy.write_bytes(files["b.bin"])
    staged = staging_path(dest) / "data" / "b.bin"
    staged.unlink()
    staged.symlink_to(decoy)
    with pytest.raises(ChunkCorrupt) as caught:
        st.commit()
    assert caught.value.index == 2
    st.close()
    assert not dest.exists() and _journaled(dest, manifest) == {0, 1}
    again = Staging(dest, manifest, env)
    assert again.open() == {0, 1}
    assert not staged.is_symlink()
    _write(again, pieces, {2, 3})
    again.commit()
    assert (dest / "b.bin").read_bytes() == files["b.bin"] == decoy.read_bytes()
    assert not (dest / "b.bin").is_symlink()


def test_a_folder_swapped_for_a_link_mid_pull_never_redirects_a_write(tmp_path: Path) -> None:
    """A folder of the partial copy renamed away and replaced by a symlink to
    a folder elsewhere after our first write into it: later writes still go
    where the walk reached (the held folder), never through the link, and
    commit refuses what it cannot reach (R-38)."""
    files = {"d/a.bin": os.urandom(CHUNK), "d/b.bin": os.urandom(CHUNK)}
    manifest, env = _manifest(files)
    pieces = _pieces(files)
    dest = tmp_path / "out"
    st = Staging(dest, manifest, env)
    st.open()
    _write(st, pieces, {0})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.bin").write_bytes(b"\0" * CHUNK)
    folder = staging_path(dest) / "data" / "d"
    moved = staging_path(dest) / "moved"
    folder.rename(moved)
    folder.symlink_to(elsewhere)
    _write(st, pieces, {1})
    assert (elsewhere / "b.bin").read_bytes() == b"\0" * CHUNK  # not written through the link
    assert (moved / "b.bin").read_bytes() == files["d/b.bin"]  # but where the walk went
    with pytest.raises(ChunkCorrupt):  # the folder is no longer ours: nothing of it counts
        st.commit()
    st.close()
    assert not dest.exists()


# -- a follower staging one in-progress manifest after another (issue 21) -----------


def _restage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: bool
) -> tuple[Staging, list[str]]:
    """A partial copy of shard ``a`` (an in-progress manifest's, say), then one
    of ``a`` and ``b``: ``a`` is taken from the first by hard link; ``change``:
    something edits it in between. Returns the second staging, and which
    files were read back to be hashed on adoption."""
    from p2pckpt.store import staging as staging_mod

    one = {"a.bin": os.urandom(3 * CHUNK), "x.json": b"{}"}
    two = {**one, "b.bin": os.urandom(2 * CHUNK)}
    dest = tmp_path / "out"
    assert _interrupted(tmp_path, one, range(4))[0] == dest
    if change:
        _flip(staging_path(dest) / "data" / "a.bin", 10)
    hashed: list[str] = []
    same_file = staging_mod.same_file

    def spy(path: Path, size: int, chunks: list[Chunk]) -> bool:
        hashed.append(str(path))
        return same_file(path, size, chunks)

    monkeypatch.setattr(staging_mod, "same_file", spy)
    manifest, env = _manifest(two)
    st = Staging(dest, manifest, env)
    st.open()
    held = {file for where in st.previous_chunks().values() for file, *_ in where}
    st.adopt("a.bin", next(f for f in held if f.endswith("a.bin")))
    return st, hashed


def test_a_file_this_process_verified_is_adopted_without_reading_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, hashed = _restage(tmp_path, monkeypatch, change=False)
    assert "a.bin" in st.files.adopted and hashed == []
    st.drop_previous()  # a link fewer moves the ctime: not "changed by something else"
    assert st.files.untouched("a.bin", (staging_path(st.dest) / "data" / "a.bin").stat())
    st.close()


def test_a_verified_file_changed_since_is_read_back_on_adoption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, hashed = _restage(tmp_path, monkeypatch, change=True)
    assert "a.bin" not in st.files.adopted and hashed  # hashed, and refused
    st.close()
