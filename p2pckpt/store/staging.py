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

``commit`` fsyncs every file, deletes the journal, then renames ``data`` (or
the single file) onto DEST without replacing anything and fsyncs the parent
(R-44): DEST appears whole or not at all (R-43), and a crash at any point
leaves either a resumable partial or a complete DEST with a harmless
leftover that the next run removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Final

from p2pckpt.errors import (
    ChunkCorrupt,
    DestinationExists,
    NoSpace,
    ResumeStateInvalid,
    StoreError,
)
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.store import journal
from p2pckpt.store.atomic import fsync_dir, write_atomic

log = logging.getLogger("p2pckpt.staging")

SUFFIX: Final = ".p2pckpt-partial"
FSYNC_INTERVAL: Final = 1.0
FREE_RESERVE: Final = 0.01
_NOSPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
ADOPT_TMP = "adopt.tmp"
_AT_FDCWD = -100


def staging_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{SUFFIX}"


def _no_space(exc: OSError) -> NoSpace:
    return NoSpace(
        f"not enough disk space ({os.strerror(exc.errno or 0)}); the partial copy is kept:"
        " free some space and run the same pull again"
    )


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename, failing with DestinationExists instead of replacing ``dst``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - non-glibc fallback
        if os.path.lexists(dst):
            raise DestinationExists(f"{dst} appeared during the pull; not replacing it") from None
        os.rename(src, dst)
        return
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE):
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise DestinationExists(f"{dst} appeared during the pull; not replacing it")
        raise OSError(err, os.strerror(err), str(dst))


def rename_exchange(src: Path, dst: Path) -> None:
    """Swap ``src`` and ``dst`` atomically: readers of ``dst`` see the old or
    the new tree, never neither (falls back to two renames without renameat2)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        renameat2 = None
    if renameat2 is not None:
        if not renameat2(
            _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE
        ):
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    # No atomic exchange here (NFS, CIFS, older ZFS): two renames. A crash
    # in between leaves DEST missing and the old copy inside the staging
    # area; the next pull starts that version afresh.
    aside = src.with_name(src.name + ".old")
    os.rename(dst, aside)
    os.rename(src, dst)
    os.rename(aside, src)


class Staging:
    """The resumable partial copy of one manifest at one destination."""

    def __init__(self, dest: Path, manifest: Manifest, envelope: bytes) -> None:
        self.dest = dest
        self.manifest = manifest
        self.path = staging_path(dest)
        self._envelope = envelope
        self._chunks = [(entry.path, chunk) for _, entry, chunk in manifest.iter_chunks()]
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._journal_fd = -1
        self._failed = False
        self.done: set[int] = set()
        self._adopted: set[str] = set()  # files hard-linked from a local copy

    @property
    def envelope(self) -> bytes:
        return self._envelope

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
        if claimed is None or not (self.path / "data").is_dir():
            self._reset()
            claimed = set()
        else:
            self._adopted = self._load_adopted()
        self.done = self._reverify(claimed)
        self._write_journal_fresh()
        return self.done

    def belongs_here(self) -> bool:
        """True if a partial copy of exactly this manifest exists (no lock taken)."""
        try:
            return (self.path / "manifest").read_bytes() == self._envelope
        except OSError:
            return False

    def discard(self) -> None:
        """Remove the staging directory (ours: it holds our manifest)."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

    def _load_journal(self) -> set[int] | None:
        if not self.belongs_here():
            return None
        try:
            with open(self.path / "journal", "rb") as f:
                return journal.parse(f.read(), self.manifest.root, len(self._chunks))
        except (OSError, ResumeStateInvalid):
            return None

    def _reset(self) -> None:
        """Start over: drop any partial state (another version, or damaged)."""
        if (self.path / "data").exists():
            log.warning(
                'discarding partial copy path="%s" (it belongs to another version or is damaged)',
                self.path,
            )
        shutil.rmtree(self.path / "data", ignore_errors=True)
        for name in ("journal", "manifest", "adopted"):
            (self.path / name).unlink(missing_ok=True)
        self._adopted = set()
        os.mkdir(self.path / "data", 0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(self.path / "manifest", flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._envelope)
            os.fsync(f.fileno())
        for entry in self.manifest.files:
            fd = self._open_file(entry.path, create=True)
            try:
                os.ftruncate(fd, entry.size)  # sizes were preflighted
            except OSError as exc:
                if exc.errno in _NOSPACE:
                    raise _no_space(exc) from exc
                raise
            finally:
                os.close(fd)

    def _reverify(self, claimed: set[int]) -> set[int]:
        """Re-hash every chunk the journal claims; keep only those that match."""
        good = set()
        for index in sorted(claimed):
            path, chunk = self._chunks[index]
            try:
                fd = self._open_file(path, create=False)
            except OSError:
                continue
            try:
                data = os.pread(fd, chunk.length, chunk.offset)
            except OSError:
                continue
            finally:
                os.close(fd)
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
        if not stat.S_ISREG(st.st_mode) or (st.st_nlink != 1 and relpath not in self._adopted):
            os.close(fd)
            raise StoreError(f"unexpected file type in {self.path}")
        return fd

    def _load_adopted(self) -> set[str]:
        try:
            text = (self.path / "adopted").read_text()
        except OSError:
            return set()
        known = {entry.path for entry in self.manifest.files}
        return {line for line in text.splitlines() if line in known}

    def adopt(self, relpath: str, source: str) -> bool:
        """Take a whole file from a local copy by hard link instead of
        copying it: no bytes written, nothing to fsync. Only a regular file
        of ours that no one else may write, and only if it hashes, chunk by
        chunk, to this file's entry (checked through the new link, so what
        was checked is what stays). Any failure means "copy instead".
        Blocking."""
        entry = next(e for e in self.manifest.files if e.path == relpath)
        first = next(i for i, (p, _) in enumerate(self._chunks) if p == relpath)
        indices = range(first, first + len(entry.chunks))
        tmp = self.path / ADOPT_TMP  # outside data/: a crash never leaves it in the copy
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp, follow_symlinks=False)
        except OSError:  # another filesystem, links not allowed, gone
            return False
        try:
            if not self._same_file(tmp, entry.size, [self._chunks[i][1] for i in indices]):
                return False
            parent, name = os.path.split(relpath)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            dir_fd = os.open(self.path / "data" / parent, flags)
            try:
                with self._lock:
                    adopted = self._adopted | {relpath}
                    listing = "".join(f"{p}\n" for p in sorted(adopted)).encode()
                    write_atomic(self.path / "adopted", listing)
                    self._adopted = adopted
                    os.replace(tmp, name, dst_dir_fd=dir_fd)
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

    @staticmethod
    def _same_file(path: Path, size: int, chunks: list[Chunk]) -> bool:
        """A regular file we own, writable by no one else, holding ``chunks``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_uid != os.getuid()
                or st.st_mode & 0o022
                or st.st_size != size
            ):
                return False
            for chunk in chunks:
                data = os.pread(fd, chunk.length, chunk.offset)
                if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
                    return False
            return True
        except OSError:  # a read error on the old copy: fetch it instead
            return False
        finally:
            os.close(fd)

    # -- writing (called from worker threads) -----------------------------------

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Verify, write at its offset, journal. Thread-safe; blocking."""
        path, chunk = self._chunks[index]
        if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
            raise ChunkCorrupt(index)
        try:
            fd = self._open_file(path, create=False)
            try:
                view = memoryview(data)
                written = 0
                while written < chunk.length:
                    written += os.pwrite(fd, view[written:], chunk.offset + written)
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
            if exc.errno in _NOSPACE:
                raise _no_space(exc) from exc
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
            for path in sorted(dirty):
                fd = self._open_file(path, create=False)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if journal_fd >= 0:
                os.fsync(journal_fd)
        except OSError:
            self._invalidate()
            raise
        finally:
            if journal_fd >= 0:
                os.close(journal_fd)

    def _invalidate(self) -> None:
        with self._lock:
            self._failed = True
        with contextlib.suppress(OSError):
            (self.path / "journal").unlink()
            fsync_dir(self.path)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self._chunks)

    # -- finishing -----------------------------------------------------------------

    def commit(self, replace: bool = False) -> None:
        """Make the verified copy durable and move it onto DEST atomically
        (``replace``: swap it with what DEST holds, which is then deleted)."""
        if not self.complete or self._failed:
            raise StoreError("commit of an incomplete copy")
        umask = os.umask(0)
        os.umask(umask)
        try:
            for entry in self.manifest.files:
                fd = self._open_file(entry.path, create=False)
                try:
                    if os.fstat(fd).st_size != entry.size:
                        raise StoreError(f"partial file {entry.path!r} has the wrong size")
                    os.fchmod(fd, 0o644 & ~umask)
                    os.fsync(fd)  # an error fails this commit; never retried
                finally:
                    os.close(fd)
            data = self.path / "data"
            for dirpath, _dirs, _files in os.walk(data, topdown=False):
                os.chmod(dirpath, 0o755 & ~umask)
                fsync_dir(Path(dirpath))
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

    def _close_journal(self) -> None:
        with self._lock:
            if self._journal_fd >= 0:
                os.close(self._journal_fd)
                self._journal_fd = -1

    def close(self) -> None:
        """Flush what is written (resumable later) and release the lock."""
        if not self._failed and self._journal_fd >= 0:
            with contextlib.suppress(OSError):
                self.sync()
        self._close_journal()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def check_free_space(dest: Path, needed: int) -> None:
    """Refuse up front when the declared bytes cannot fit (R-40)."""
    usage = shutil.disk_usage(dest.parent)
    reserve = int(usage.total * FREE_RESERVE)
    if needed > usage.free - reserve:
        raise NoSpace(
            f"{dest.parent} has {usage.free / 1e9:.2f} GB free; this pull needs"
            f" {needed / 1e9:.2f} GB plus a 1% reserve"
        )
