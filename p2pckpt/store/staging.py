"""The partial copy of a pull, hidden beside its destination, and its commit.

Layout, for ``-o DEST``::

    PARENT/.DEST.p2pckpt-partial/     0700, created by us
        lock                          flock: one writer per staging set (R-48)
        manifest                      the signed envelope this partial belongs to
        journal                       see journal.py
        data/...                      the checkpoint tree, files created 0600

Writes below ``data`` go through directory file descriptors with
``O_NOFOLLOW`` and ``O_EXCL`` (R-38); manifest paths were validated before
we get here. Each chunk write opens its file afresh (cheap next to 4 MiB),
so no file descriptor is shared between writer threads. A chunk is written
only after its hash matched (never an unverified byte), then journaled; a
flusher thread fsyncs files and journal every FSYNC_INTERVAL. An fsync error
deletes the journal (R-45): the next run re-verifies from scratch rather
than trust pages the kernel may have dropped.

``commit`` makes every file durable (an fsync each; for a folder of many
files, one syncfs where that is as safe: fs/sync.py), deletes the journal,
then renames ``data`` (or the single file) onto DEST without replacing
anything and fsyncs the parent (R-44): DEST appears whole or not at all
(R-43), and a crash at any point leaves either a resumable partial or a
complete DEST with a harmless leftover that the next run removes.

Healing (issue 13, heal.py): what an earlier run, a crash or someone else
left here never fails every later run. Before the commit rename, chunks are
read back and hashed again where the partial copy could have been touched:
all of them on a resumed pull, and on a fresh one every file whose inode,
ctime, size, link count or mode is not what our own last write left (the
tripwire of partial_files.py, checked before each of our writes and at
commit). A chunk that no longer matches is dropped from the journal and the
pull fails with ChunkCorrupt (exit 9); the next run fetches only what was
dropped. See docs/protocol.md §5 for the rule and its measured cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Final

from p2pckpt.errors import NO_SPACE_ERRNOS, ChunkCorrupt, NoSpace, P2pckptError, StoreError
from p2pckpt.fs.atomic import fsync_dir, write_atomic
from p2pckpt.fs.rename import rename_exchange, rename_noreplace
from p2pckpt.fs.sync import syncfs, syncfs_trusted
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest, verify_any
from p2pckpt.manifest.select import Selection
from p2pckpt.store import journal, journal_file
from p2pckpt.store.heal import (
    PREVIOUS,
    claim_dir,
    fresh_file,
    heal_tree,
    open_lock,
    prune_empty_dirs,
    settle,
    start_over,
)
from p2pckpt.store.locations import file_path
from p2pckpt.store.partial_files import (
    ADOPT_TMP,
    GONE,
    Identity,
    PartialFiles,
    identity,
    same_file,
)
from p2pckpt.store.space import no_space, no_space_as_error

log = logging.getLogger("p2pckpt.staging")

SUFFIX: Final = ".p2pckpt-partial"
FSYNC_INTERVAL: Final = 1.0
SYNCFS_AFTER: Final = 16  # more files than this to make durable: one syncfs, where trusted


# Files of this process's partial copies whose every chunk it verified, by
# (device, inode): what its own last change left on the file (the tripwire's
# ``identity``) and the file's chunks. A later partial copy adopting such a
# file while it still looks exactly so (nothing wrote it, or chmod-ed or
# linked it, since) takes it without reading it back (issue 21: a follower
# stages each in-progress manifest, then the final one, over the same shards).
# Only in memory: a new process trusts no file it did not hash itself.
_VERIFIED: OrderedDict[tuple[int, int], tuple[Identity, tuple[Chunk, ...]]] = OrderedDict()
MAX_VERIFIED: Final = 4096


def _remember_verified(st: os.stat_result, chunks: tuple[Chunk, ...]) -> None:
    _VERIFIED[(st.st_dev, st.st_ino)] = (identity(st), chunks)
    _VERIFIED.move_to_end((st.st_dev, st.st_ino))
    while len(_VERIFIED) > MAX_VERIFIED:
        _VERIFIED.popitem(last=False)


def _verified_before(st: os.stat_result, chunks: tuple[Chunk, ...]) -> bool:
    """Whether this process verified the file ``st`` holding ``chunks``, and
    nothing changed it since."""
    held = _VERIFIED.get((st.st_dev, st.st_ino))
    return held is not None and held == (identity(st), chunks)


def staging_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{SUFFIX}"


def _same_inode_content(st: os.stat_result, before: os.stat_result) -> bool:
    """The same inode, its mode, size and mtime unchanged (a link added or
    removed moves only its ctime)."""
    return (st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_size) == (
        before.st_dev,
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
        before.st_size,
    )


def _same_inode(path: Path, before: os.stat_result) -> bool:
    """``path`` is a plain file of ours no one else may write, the very inode
    ``before`` was, unchanged (a link moves only its ctime)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o022
        and (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        == (before.st_dev, before.st_ino, before.st_mtime_ns, before.st_size)
    )


class Staging:
    """The resumable partial copy of one manifest at one destination: of
    every file, or of the files in ``selection`` (issue 19: the signed
    manifest is still the whole version's, and chunk indices its)."""

    def __init__(
        self, dest: Path, manifest: Manifest, envelope: bytes, selection: Selection = None
    ) -> None:
        self.dest = dest
        self.manifest = manifest
        self.selection = selection
        self.path = staging_path(dest)
        self._envelope = envelope
        self.files = PartialFiles(self.path, manifest, selection)  # data/ and the tripwire
        self.wanted = self.files.wanted  # the chunks this copy needs
        self.wanted_bytes = sum(e.size for e in self.files.entries)
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._journal_fd = -1
        self._failed = False
        self.done: set[int] = set()
        self.resumed = False  # the partial copy existed before this run: re-read it all
        self.reread = 0  # bytes read back and hashed again by the last commit

    @property
    def envelope(self) -> bytes:
        return self._envelope

    # -- opening and resuming -------------------------------------------------

    def open(self) -> set[int]:
        """Create or resume the partial copy; returns verified chunk indices."""
        if not self.dest.parent.is_dir():
            raise StoreError(f"{self.dest.parent} does not exist")
        with no_space_as_error(self.dest.parent):
            loose = claim_dir(self.path)
            self._lock_fd = open_lock(self.path)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another pull is writing {self.dest}") from None
            claimed = None
            if not loose and self.belongs_here():
                claimed = journal_file.load(self.path, self.manifest.root, len(self.files.chunks))
            if claimed is not None:
                self.files.adopted = self.files.load_adopted()
            if claimed is None or not heal_tree(self.files, self.manifest):
                # A staging area others could write keeps nothing of what it held.
                start_over(self.files, self.manifest, self._envelope, keep=not loose)
                claimed = set()
            else:
                self.resumed = True
            self.done = self._reverify(claimed)
            self._drop_broken_adoptions()
            self._write_journal_fresh()
        return self.done

    def belongs_here(self) -> bool:
        """True if a partial copy of exactly this manifest exists (no lock taken)."""
        try:
            return (self.path / "manifest").read_bytes() == self._envelope
        except OSError:
            return False

    def previous_chunks(self) -> dict[bytes, list[tuple[str, int, int, bool]]]:
        """Where the verified chunks of the partial copy of another version
        kept aside (``heal.start_over``) lie, by hash, as the catalog's
        ``copies`` says it (every read is checked again). Blocking."""
        previous = self.path / PREVIOUS
        found: dict[bytes, list[tuple[str, int, int, bool]]] = {}
        try:  # an in-progress manifest's partial too (issue 21): only hashes are used
            old = verify_any((previous / "manifest").read_bytes())
        except (OSError, P2pckptError):
            return found
        # A whole file of an in-progress copy the new manifest holds unchanged
        # is taken by hard link (``reuse.identical_file``), not copied.
        whole = old.in_progress is not None
        chunks = list(old.iter_chunks())
        claimed = journal_file.load(previous, old.root, len(chunks)) or set()
        for index, entry, chunk in chunks:
            if index in claimed:
                where = str(file_path(previous / "data", "dir", entry.path))
                found.setdefault(chunk.digest, []).append(
                    (where, chunk.offset, chunk.length, whole)
                )
        return found

    def drop_previous(self) -> None:
        """Remove the partial copy of another version once its chunks are taken.
        A file adopted from it loses a link, which moves its ctime: the
        tripwire restarts from there when nothing else about it changed."""
        before: dict[str, os.stat_result] = {}
        for relpath in self.files.adopted:
            with contextlib.suppress(OSError, StoreError):
                fd = self.files.open(relpath, create=False)
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                if self.files.untouched(relpath, st):
                    before[relpath] = st
        shutil.rmtree(self.path / PREVIOUS, ignore_errors=True)
        for relpath, old in before.items():
            with contextlib.suppress(OSError, StoreError):
                fd = self.files.open(relpath, create=False)
                try:
                    st = os.fstat(fd)
                    with self.files.locks[relpath]:
                        if _same_inode_content(st, old):
                            self.files.record(relpath, fd)
                finally:
                    os.close(fd)

    def discard(self) -> None:
        """Remove the staging directory (ours: it holds our manifest)."""
        self.files.close_dirs()
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

    def _drop_broken_adoptions(self) -> None:
        """An adopted file whose chunks did not all verify is a link to a copy
        that changed: replace it by a file of our own before anything writes."""
        for entry in self.files.entries:
            if entry.path not in self.files.adopted:
                continue
            if all(i in self.done for i in self.files.file_chunks[entry.path]):
                continue
            dir_fd, name = self.files.parent(entry.path, create=False)
            try:
                fresh_file(self.files, entry.path, entry.size, dir_fd, name)
            finally:
                os.close(dir_fd)
            with self._lock:
                self.done.difference_update(self.files.file_chunks[entry.path])

    def _reverify(self, claimed: set[int]) -> set[int]:
        """Re-hash every chunk the journal claims (of the files selected);
        keep only those that match."""
        return self.files.matching(sorted(claimed & self.wanted))

    def _write_journal_fresh(self) -> None:
        """Rewrite the journal to exactly the verified set (drops a torn tail)."""
        self._close_journal()
        with self._lock:
            done = sorted(self.done)
        root, count = self.manifest.root, len(self.files.chunks)
        self._journal_fd = journal_file.write_fresh(self.path, root, count, done)

    # -- writing (called from worker threads) -----------------------------------

    def adopt(self, relpath: str, source: str) -> bool:
        """Take a whole file from a local copy by hard link instead of
        copying it: no bytes written, nothing to fsync. Only a regular file
        of ours that no one else may write, and only if it hashes, chunk by
        chunk, to this file's entry (checked through the new link, so what
        was checked is what stays). Any failure means "copy instead".
        Blocking."""
        entry = next(e for e in self.manifest.files if e.path == relpath)
        indices = self.files.file_chunks[relpath]
        tmp = self.path / ADOPT_TMP  # outside data/: a crash never leaves it in the copy
        tmp.unlink(missing_ok=True)
        chunks = tuple(self.files.chunks[i][1] for i in indices)
        try:
            before = os.lstat(source)
            known = _verified_before(before, chunks)  # before the link moves its ctime
            os.link(source, tmp, follow_symlinks=False)
        except OSError:  # another filesystem, links not allowed, gone
            return False
        try:
            if not (known and _same_inode(tmp, before)) and not same_file(
                tmp, entry.size, list(chunks)
            ):
                return False
            parent, name = os.path.split(relpath)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            dir_fd = os.open(self.path / "data" / parent, flags)
            try:
                with self._lock, no_space_as_error(self.dest.parent):
                    adopted = self.files.adopted | {relpath}
                    listing = "".join(f"{p}\n" for p in sorted(adopted)).encode()
                    write_atomic(self.path / "adopted", listing)
                    self.files.adopted = adopted
                    os.replace(tmp, name, dst_dir_fd=dir_fd)
                    # the tripwire starts from the link as it is now (rename moved its ctime)
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    self.files.seen[relpath] = identity(st)
                    new = [i for i in indices if i not in self.done]
                    if new:
                        records = b"".join(journal.record(self.manifest.root, i) for i in new)
                        os.write(self._journal_fd, records)
                        self.done.update(new)
            finally:
                os.close(dir_fd)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Verify, write at its offset, journal. Thread-safe; blocking.

        The file's lock is held from the tripwire check before the write to
        the record after it, so our writes never look like someone else's
        and someone else's never look like ours (see ``PartialFiles.untouched``)."""
        path, chunk = self.files.chunks[index]
        if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
            raise ChunkCorrupt(index)
        try:
            fd = self.files.open(path, create=False)
            try:
                view = memoryview(data)
                with self.files.locks[path]:
                    self.files.check_untouched(path, os.fstat(fd))
                    written = 0
                    while written < chunk.length:
                        written += os.pwrite(fd, view[written:], chunk.offset + written)
                    self.files.record(path, fd)
            finally:
                os.close(fd)
            with self._lock:
                if self._failed:
                    raise StoreError("the partial copy could not be flushed to disk")
                if index not in self.done:
                    os.write(self._journal_fd, journal.record(self.manifest.root, index))
                    self.done.add(index)
                self._dirty.add(path)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise no_space(exc, self.dest.parent) from exc
            raise

    def sync(self) -> None:
        """Flush written files, then the journal (blocking; the flusher calls
        it every FSYNC_INTERVAL so the final commit has little left to write).

        The journal is only a hint — every claim is re-hashed on resume — so
        the order matters for efficiency, not correctness. Any fsync error is
        final for this partial copy (R-45): the journal is deleted.
        """
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            journal_fd = os.dup(self._journal_fd) if self._journal_fd >= 0 else -1
        try:
            synced = self._one_syncfs(len(dirty))  # the journal too
            for path in [] if synced else sorted(dirty):
                try:
                    fd = self.files.open(path, create=False)
                except (OSError, StoreError) as exc:
                    if isinstance(exc, OSError) and exc.errno not in GONE:
                        raise
                    continue  # replaced under us: not ours to flush (nor to commit)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if journal_fd >= 0 and not synced:
                os.fsync(journal_fd)
        except OSError as exc:
            self._invalidate()
            if exc.errno in NO_SPACE_ERRNOS:
                raise no_space(exc, self.dest.parent) from exc
            raise
        finally:
            if journal_fd >= 0:
                os.close(journal_fd)

    def _one_syncfs(self, files: int) -> bool:
        """Make everything durable with one syncfs instead of ``files``
        fsyncs, where that is as safe (fs/sync.py): many files, a fresh run
        (every byte of ours written since ``_lock_fd`` was opened), a
        filesystem whose errors syncfs reports. False: the caller fsyncs
        each file. A syncfs error is final, as an fsync error is (R-45):
        fsyncing each file afresh could miss an error whose inode the
        kernel has already dropped, and report lost data as durable. The
        error may be another process's; then the next run re-verifies and
        completes."""
        if files <= SYNCFS_AFTER or self.resumed or self._lock_fd < 0:
            return False
        if not syncfs_trusted(str(self.path)):
            return False
        syncfs(self._lock_fd)
        return True

    def _invalidate(self) -> None:
        with self._lock:
            self._failed = True
        with contextlib.suppress(OSError):
            (self.path / "journal").unlink()
            fsync_dir(self.path)

    @property
    def complete(self) -> bool:
        """Every chunk of the files selected is verified here."""
        return self.wanted <= self.done

    # -- finishing -----------------------------------------------------------------

    def commit(self, replace: bool = False) -> None:
        """Make the verified copy durable and move it onto DEST atomically
        (``replace``: swap it with what DEST holds, which is then deleted).

        First what could have been touched is read back and hashed again
        (``_read_back``); a chunk that no longer matches raises ChunkCorrupt
        with the journal rewritten without it, so the next run fetches only
        that. Nothing unverified is ever renamed onto DEST."""
        if not self.complete or self._failed:
            raise StoreError("commit of an incomplete copy")
        with no_space_as_error(self.dest.parent):
            self._commit(replace)

    def _commit(self, replace: bool) -> None:
        umask = os.umask(0)
        os.umask(umask)
        try:
            self._read_back()
            for entry in self.files.entries:
                fd = self.files.open(entry.path, create=False)
                try:
                    if not self.files.untouched(entry.path, os.fstat(fd)):
                        raise StoreError(
                            f"partial file {entry.path!r} changed while it was being committed;"
                            " run the same pull again"
                        )
                    os.fchmod(fd, 0o644 & ~umask)
                finally:
                    os.close(fd)
            data = self.path / "data"
            if self.selection is not None:
                prune_empty_dirs(data)  # folders of files not selected
            dirs = [Path(dirpath) for dirpath, _, _ in os.walk(data, topdown=False)]
            for folder in dirs:
                os.chmod(folder, 0o755 & ~umask)
            files = [e.path for e in self.files.entries]
            if self._one_syncfs(len(files)):  # files and folders alike
                # but adopted files were written before this run: fsynced here
                files, dirs = [f for f in files if f in self.files.adopted], []
            for relpath in files:
                fd = self.files.open(relpath, create=False)
                try:
                    os.fsync(fd)  # an error fails this commit; never retried
                finally:
                    os.close(fd)
            for folder in dirs:
                fsync_dir(folder)
        except OSError:
            self._invalidate()
            raise
        # From here the data is durable. Drop the journal first, so a crash
        # after the rename cannot leave a journal pointing at moved files.
        self._close_journal()
        (self.path / "journal").unlink(missing_ok=True)
        fsync_dir(self.path)
        src = data / self.manifest.files[0].path if self.manifest.kind == "file" else data
        if replace and os.path.lexists(self.dest):
            rename_exchange(src, self.dest)  # the old copy now sits in the staging area
        else:
            rename_noreplace(src, self.dest)
        fsync_dir(self.dest.parent)
        self.close()
        self.discard()

    def _read_back(self) -> None:
        """Hash again, from the partial files, every chunk that could have
        been changed since it was verified: all of them if this partial copy
        existed before this run (``resumed``: a crash, a kill, days on disk),
        else those of each file the tripwire caught (``PartialFiles.untouched``). A file
        longer than declared is cut back first; one no longer ours (another
        owner, or an adopted file whose copy changed size) counts as wholly
        bad. Raises ChunkCorrupt naming the first bad chunk after dropping
        every bad one from the journal (the partial copy stays resumable)."""
        started = time.monotonic()
        bad: set[int] = set()
        for entry in self.files.entries:
            if not settle(self.files, entry.path, entry.size):
                bad.update(self.files.file_chunks[entry.path])
        paths = set(self.files.sizes) if self.resumed else self.files.touched
        indices = [
            i for i, (path, _) in enumerate(self.files.chunks) if path in paths and i not in bad
        ]
        if not indices and not bad:
            self.reread = 0
            return
        good = self.files.matching(indices)
        bad.update(i for i in indices if i not in good)
        self.reread = sum(self.files.chunks[i][1].length for i in indices)
        log.info(
            "read back before commit name=%s version=%d bytes=%d seconds=%.2f reason=%s",
            self.manifest.name,
            self.manifest.version,
            self.reread,
            time.monotonic() - started,
            "resumed" if self.resumed else "changed by something else",
        )
        if not bad:
            return
        with self._lock:
            self.done.difference_update(bad)
        self._write_journal_fresh()
        first = min(bad)
        raise ChunkCorrupt(
            first,
            f"{self.files.chunks[first][0]!r} changed in the partial copy {self.path} after it was"
            f" written and verified ({len(bad)} chunk(s) no longer match); nothing was"
            " committed: run the same pull again to fetch them again",
        )

    def _remember(self) -> None:
        """Note each file whose every chunk is verified here and that only we
        changed since (see ``_VERIFIED``)."""
        with self._lock:
            done = set(self.done)
        for entry in self.files.entries:
            seen = self.files.seen.get(entry.path)
            if seen is None or entry.path in self.files.touched:
                continue
            if not all(i in done for i in self.files.file_chunks[entry.path]):
                continue
            try:
                fd = self.files.open(entry.path, create=False)
            except (OSError, StoreError):
                continue
            try:
                st = os.fstat(fd)
                if identity(st) == seen and st.st_size == entry.size:
                    _remember_verified(st, tuple(entry.chunks))
            finally:
                os.close(fd)

    def _close_journal(self) -> None:
        with self._lock:
            if self._journal_fd >= 0:
                os.close(self._journal_fd)
                self._journal_fd = -1

    def close(self) -> None:
        """Flush what is written (resumable later) and release the lock."""
        if not self._failed and self._journal_fd >= 0:
            with contextlib.suppress(OSError, NoSpace):
                self.sync()
            self._remember()
        self._close_journal()
        self.files.close_dirs()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
