"""The partial copy of a pull, hidden beside its destination, and its commit.

Layout, for ``-o DEST``::

    PARENT/.DEST.p2pckpt-partial/     0700, created by us (O_EXCL-like mkdir)
        lock                          flock: one writer per staging set (R-48)
        manifest                      the signed envelope this partial belongs to
        journal                       see journal.py
        data/...                      the checkpoint tree, files created 0600

Writes below ``data`` go through directory file descriptors with
``O_NOFOLLOW`` and ``O_EXCL`` (R-38); manifest paths are validated before we
get here. A chunk is written only after its hash matched (never an
unverified byte), then journaled; the journal and files are fsynced in
batches. ``commit`` fsyncs every file, sets normal modes, renames ``data``
(or the single file) onto DEST and fsyncs the parent (R-44): DEST appears
whole or not at all (R-43).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final

from p2pckpt.errors import (
    ChunkCorrupt,
    DestinationExists,
    NoSpace,
    ResumeStateInvalid,
    StoreError,
)
from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.store import journal
from p2pckpt.store.atomic import fsync_dir

SUFFIX: Final = ".p2pckpt-partial"
FSYNC_INTERVAL: Final = 1.0
MAX_OPEN_FILES: Final = 128
FREE_RESERVE: Final = 0.01
_NOSPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def staging_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{SUFFIX}"


def _no_space(exc: OSError) -> NoSpace:
    return NoSpace(
        f"not enough disk space ({os.strerror(exc.errno or 0)}); the partial copy is kept:"
        " free some space and run the same pull again"
    )


class Staging:
    """The resumable partial copy of one manifest at one destination."""

    def __init__(self, dest: Path, manifest: Manifest, envelope: bytes) -> None:
        self.dest = dest
        self.manifest = manifest
        self.path = staging_path(dest)
        self._envelope = envelope
        self._chunks = [(entry.path, chunk) for _, entry, chunk in manifest.iter_chunks()]
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._journal_fd = -1
        self._data_fd = -1
        self.done: set[int] = set()

    # -- opening and resuming -------------------------------------------------

    def open(self) -> set[int]:
        """Create or resume the partial copy; returns verified chunk indices."""
        if not self.dest.parent.is_dir():
            raise StoreError(f"{self.dest.parent} does not exist")
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            st = os.lstat(self.path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                raise StoreError(f"{self.path} exists and is not ours") from None
        self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another pull is writing {self.dest}") from None
        claimed = self._load_journal()
        if claimed is None:
            self._reset()
            claimed = set()
        self._data_fd = os.open(self.path / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.done = self._reverify(claimed)
        self._write_journal_fresh()
        return self.done

    def _load_journal(self) -> set[int] | None:
        try:
            with open(self.path / "manifest", "rb") as f:
                if f.read() != self._envelope:
                    return None
            with open(self.path / "journal", "rb") as f:
                return journal.parse(f.read(), self.manifest.root, len(self._chunks))
        except (FileNotFoundError, ResumeStateInvalid):
            return None

    def _reset(self) -> None:
        """Start over: drop any partial state for another version."""
        shutil.rmtree(self.path / "data", ignore_errors=True)
        for name in ("journal", "manifest"):
            (self.path / name).unlink(missing_ok=True)
        os.mkdir(self.path / "data", 0o700)
        fd = os.open(
            self.path / "manifest", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        with os.fdopen(fd, "wb") as f:
            f.write(self._envelope)
            os.fsync(f.fileno())
        self._prepare_files()

    def _prepare_files(self) -> None:
        """Create every file at its declared size (sizes were preflighted)."""
        for entry in self.manifest.files:
            fd = self._open_file(entry.path, create=True)
            try:
                os.ftruncate(fd, entry.size)
            except OSError as exc:
                if exc.errno in _NOSPACE:
                    raise _no_space(exc) from exc
                raise

    def _reverify(self, claimed: set[int]) -> set[int]:
        """Re-hash every chunk the journal claims; keep only those that match."""
        good = set()
        for index in sorted(claimed):
            path, chunk = self._chunks[index]
            try:
                fd = self._fd(path)
                data = os.pread(fd, chunk.length, chunk.offset)
            except OSError:
                continue
            if len(data) == chunk.length and chunk_hash(data) == chunk.digest:
                good.add(index)
        return good

    def _write_journal_fresh(self) -> None:
        """Rewrite the journal to exactly the verified set (drops a torn tail)."""
        body = journal.header(self.manifest.root, len(self._chunks)) + b"".join(
            journal.record(self.manifest.root, i) for i in sorted(self.done)
        )
        tmp = self.path / "journal.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "journal")
        fsync_dir(self.path)
        self._journal_fd = os.open(self.path / "journal", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)

    # -- files ------------------------------------------------------------------

    def _open_file(self, relpath: str, create: bool) -> int:
        """Open ``data/relpath`` without following any link (fd-relative walk)."""
        parts = relpath.split("/")
        dir_fd = os.open(self.path / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in parts[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=dir_fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = nxt
            flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if create else 0)
            fd = os.open(parts[-1], flags, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise StoreError(f"unexpected file type in {self.path}")
        return fd

    def _fd(self, relpath: str) -> int:
        with self._lock:
            fd = self._fds.get(relpath)
            if fd is not None:
                self._fds.move_to_end(relpath)
                return fd
            fd = self._open_file(relpath, create=False)
            self._fds[relpath] = fd
            if len(self._fds) > MAX_OPEN_FILES:
                _, old_fd = self._fds.popitem(last=False)
                os.fsync(old_fd)
                os.close(old_fd)
            return fd

    # -- writing (called from worker threads) -----------------------------------

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Verify, write at its offset, journal. Thread-safe; blocking."""
        path, chunk = self._chunks[index]
        if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
            raise ChunkCorrupt(index)
        try:
            fd = self._fd(path)
            view = memoryview(data)
            written = 0
            while written < chunk.length:
                written += os.pwrite(fd, view[written:], chunk.offset + written)
            with self._lock:
                if index not in self.done:
                    os.write(self._journal_fd, journal.record(self.manifest.root, index))
                    self.done.add(index)
                self._dirty.add(fd)
        except OSError as exc:
            if exc.errno in _NOSPACE:
                raise _no_space(exc) from exc
            raise

    def sync(self) -> None:
        """Flush written chunks, then the journal (blocking; call it from a
        flusher thread every FSYNC_INTERVAL so the final commit has little
        left to write). Writers are not held up: the lock covers only the
        bookkeeping, not the fdatasync calls."""
        with self._lock:
            dirty = list(self._dirty)
            self._dirty.clear()
            # Duplicates keep the files open while we sync outside the lock;
            # the journal goes last so it never claims unflushed chunks.
            dups = [os.dup(fd) for fd in dirty]
            if self._journal_fd >= 0:
                dups.append(os.dup(self._journal_fd))
        try:
            for fd in dups:
                os.fdatasync(fd)
        finally:
            for fd in dups:
                os.close(fd)

    def _sync_locked(self) -> None:
        for fd in self._dirty:
            os.fdatasync(fd)
        self._dirty.clear()
        os.fsync(self._journal_fd)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self._chunks)

    # -- finishing -----------------------------------------------------------------

    def commit(self) -> None:
        """Make the verified copy durable and move it onto DEST atomically."""
        if not self.complete:
            raise StoreError("commit of an incomplete copy")
        umask = os.umask(0)
        os.umask(umask)
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._dirty.clear()
        for entry in self.manifest.files:
            fd = self._open_file(entry.path, create=False)
            try:
                if os.fstat(fd).st_size != entry.size:
                    raise StoreError(f"partial file {entry.path!r} has the wrong size")
                os.fchmod(fd, 0o644 & ~umask)
                os.fsync(fd)  # an fsync error fails this commit; never retried
            finally:
                os.close(fd)
        data = self.path / "data"
        for dirpath, _dirs, _files in os.walk(data, topdown=False):
            os.chmod(dirpath, 0o755 & ~umask)
            fsync_dir(Path(dirpath))
        src = data / self.manifest.files[0].path if self.manifest.kind == "file" else data
        if os.path.lexists(self.dest):
            raise DestinationExists(f"{self.dest} appeared during the pull; not replacing it")
        os.rename(src, self.dest)
        fsync_dir(self.dest.parent)
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        fsync_dir(self.dest.parent)

    def close(self) -> None:
        """Flush what is written (resumable later) and release the lock."""
        with self._lock:
            try:
                if self._journal_fd >= 0:
                    self._sync_locked()
            except OSError:
                pass  # best effort: the journal is advisory and re-verified
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for attr in ("_journal_fd", "_data_fd", "_lock_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, attr, -1)


def check_free_space(dest: Path, needed: int) -> None:
    """Refuse up front when the declared bytes cannot fit (R-40)."""
    usage = shutil.disk_usage(dest.parent)
    reserve = int(usage.total * FREE_RESERVE)
    if needed > usage.free - reserve:
        raise NoSpace(
            f"{dest.parent} has {usage.free / 1e9:.2f} GB free; this pull needs"
            f" {needed / 1e9:.2f} GB plus a 1% reserve"
        )
