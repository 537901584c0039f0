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

Healing (issue 13): what an earlier run, a crash or someone else left here
never fails every later run. On resume the directory must be ours and not a
link (refused otherwise); open to other users, it is made 0700 again and,
if others could write it, started over. A file longer or shorter than
declared is truncated to its declared size, a missing one created again, a
link or anything not a plain file of ours replaced; what the journal claims
is re-hashed either way (R-46). Before the commit rename, chunks are read
back and hashed again where the partial copy could have been touched: all
of them on a resumed pull, and on a fresh one every file whose inode,
ctime, size, link count or mode is not what our own last write left (the
tripwire, checked before each of our writes and at commit). A chunk that no
longer matches is dropped from the journal and the pull fails with
ChunkCorrupt (exit 9); the next run fetches only what was dropped. See
docs/protocol.md §5 for the rule and its measured cost.
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
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from p2pckpt.errors import (
    NO_SPACE_ERRNOS,
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
_NOSPACE = NO_SPACE_ERRNOS
REREAD_THREADS: Final = 2  # hashing threads for the read-back before commit
_REREAD_BATCH: Final = 64  # chunks handed to the pool at a time (bounded memory)
# A partial file that is gone, or has a link, directory or FIFO in its place.
_GONE = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO}
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
ADOPT_TMP = "adopt.tmp"
_AT_FDCWD = -100


def staging_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{SUFFIX}"


def _no_space(exc: OSError, where: Path | None = None) -> NoSpace:
    what = os.strerror(exc.errno or 0)
    if where is not None and exc.errno == errno.ENOSPC:
        with contextlib.suppress(OSError):
            if os.statvfs(where).f_favail == 0:
                what = f"no free inodes left on the filesystem of {where}"
    return NoSpace(
        f"not enough disk space ({what}); the partial copy is kept:"
        " free some space and run the same pull again"
    )


@contextlib.contextmanager
def no_space_as_error(where: Path | None = None) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT/EFBIG/EROFS into NoSpace (exit 10, R-47)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NOSPACE:
            raise _no_space(exc, where) from exc
        raise


def _remove(path: Path | str, dir_fd: int | None = None) -> None:
    """Remove whatever ``path`` is (a tree is removed without following links)."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, dir_fd=dir_fd)
    else:
        os.unlink(path, dir_fd=dir_fd)


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


def _foreign(st: os.stat_result, adopted: bool) -> str | None:
    """Why ``st`` is not a partial file of ours (None if it is): a plain file,
    our own, with one link, or for a file adopted from a local copy (a hard
    link on purpose), writable by no one else. A mode of ours gone loose is
    fixed, not a reason to replace the file (a chmod moves the ctime)."""
    if not stat.S_ISREG(st.st_mode):
        return "not a plain file"
    if st.st_uid != os.getuid():
        return "not ours"
    if adopted:
        return "writable by others" if st.st_mode & 0o022 else None
    if st.st_nlink != 1:
        return "hard-linked elsewhere"
    return None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """The tripwire: which file, and when anyone last changed it."""
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns)


def _make_private(fd: int, mode: int = 0o600) -> bool:
    """Set ``mode`` where the filesystem keeps modes at all (vfat and some
    network mounts do not, or refuse: what is in the file is hashed anyway);
    True if the mode is now ``mode``."""
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EROFS):
            raise
    return stat.S_IMODE(os.fstat(fd).st_mode) == mode


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
        self._sizes = {entry.path: entry.size for entry in manifest.files}
        self._file_chunks: dict[str, range] = {}  # each file's chunk indices
        first = 0
        for entry in manifest.files:
            self._file_chunks[entry.path] = range(first, first + len(entry.chunks))
            first += len(entry.chunks)
        # What our own last change left on each file: (st_dev, st_ino,
        # st_ctime_ns, st_mtime_ns). Each of our writes holds the file's lock
        # from the check before it to the record after it, so any other change
        # shows as a different ctime.
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._file_locks = {entry.path: threading.Lock() for entry in manifest.files}
        self._touched: set[str] = set()  # files something else changed under us
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
            loose = self._make_dir()
            self._lock_fd = self._open_lock()
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another pull is writing {self.dest}") from None
            claimed = None if loose else self._load_journal()
            if claimed is not None:
                self._adopted = self._load_adopted()
            if claimed is None or not self._heal():
                self._reset()
                claimed = set()
            else:
                self.resumed = True
            self.done = self._reverify(claimed)
            self._drop_broken_adoptions()
            self._write_journal_fresh()
        return self.done

    def _make_dir(self) -> bool:
        """Create the staging directory 0700, or check the one that is there:
        ours and a real directory (never a link), else refused. If it is
        open to other users its mode is fixed; returns True if others could
        write into it, so nothing in it is trusted (R-54, R-57)."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path, 0o700)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(
                    f"{self.path} exists and is not a directory (a link or a file); not using it"
                ) from None
            raise
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid():
                raise StoreError(f"{self.path} exists and is not ours")
            mode = stat.S_IMODE(st.st_mode)
            if not mode & 0o077:
                return False
            if not _make_private(fd, 0o700):
                return False  # a filesystem without modes (vfat): nothing to fix, or trust less
            writable = bool(mode & 0o022)
            log.warning(
                'partial copy was open to other users path="%s" mode=%o (made it 0700%s)',
                self.path,
                mode,
                "; starting it over, as anyone could have replaced what it held"
                if writable
                else "",
            )
            return writable
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        """Open the lock file: a plain file of ours with one link; anything
        else in its place (a link, a FIFO, a directory) is removed first."""
        path = self.path / "lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(2):
            try:
                fd = os.open(path, flags, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise
                _remove(path)
                continue
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1:
                return fd
            os.close(fd)
            _remove(path)
        raise StoreError(f"{path} keeps being replaced; not using {self.path}")

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
        if os.path.lexists(self.path / "data"):
            log.warning(
                'discarding partial copy path="%s" (it belongs to another version or is damaged)',
                self.path,
            )
        for name in ("data", "journal", "journal.tmp", "manifest", "adopted", ADOPT_TMP):
            _remove(self.path / name)
        self._adopted = set()
        self._seen = {}
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
                self._record(entry.path, fd)
            finally:
                os.close(fd)

    def _heal(self) -> bool:
        """Make the files of a partial copy being resumed what this run needs:
        each a plain file of ours (0600, one link) of its declared size.
        Returns False if the tree itself is damaged (a directory replaced by
        a link or a file, or not ours): then it starts over."""
        try:
            fd = os.open(self.path / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid():
                return False
            if stat.S_IMODE(st.st_mode) & 0o077:
                _make_private(fd, 0o700)
        finally:
            os.close(fd)
        for entry in self.manifest.files:
            try:
                self._heal_file(entry.path, entry.size)
            except (OSError, StoreError) as exc:
                if isinstance(exc, OSError) and exc.errno in _NOSPACE:
                    raise
                log.warning(
                    'partial copy is damaged path="%s" file="%s" error="%s" (starting it over)',
                    self.path,
                    entry.path,
                    exc,
                )
                return False
        return True

    def _heal_file(self, relpath: str, size: int) -> None:
        dir_fd, name = self._parent(relpath, create=True)
        try:
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            adopted = relpath in self._adopted
            problem = "missing" if st is None else _foreign(st, adopted)
            if problem is None and adopted and st is not None and st.st_size != size:
                problem = "linked copy changed"  # never write into the file it is linked to
            if problem is not None:
                log.warning(
                    'replacing partial file path="%s" file="%s" (%s; its chunks are fetched again)',
                    self.path,
                    relpath,
                    problem,
                )
                self._fresh_file(relpath, size, dir_fd, name)
                return
            assert st is not None
            fd = os.open(
                name,
                (os.O_RDONLY if adopted else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK,
                dir_fd=dir_fd,
            )
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise StoreError(f"{relpath!r} was replaced while being checked")
                if not adopted and now.st_size != size:
                    log.warning(
                        'partial file has the wrong size path="%s" file="%s" size=%d declared=%d'
                        " (truncated to its declared size; what the journal claims is re-hashed)",
                        self.path,
                        relpath,
                        now.st_size,
                        size,
                    )
                    os.ftruncate(fd, size)
                if not adopted and stat.S_IMODE(now.st_mode) != 0o600:
                    _make_private(fd)
                self._record(relpath, fd)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def _fresh_file(self, relpath: str, size: int, dir_fd: int, name: str) -> None:
        """Put an empty file of ``size`` bytes, ours alone, at ``name`` in place
        of whatever is there (its chunks are no longer ours)."""
        _remove(name, dir_fd)
        if relpath in self._adopted:
            self._adopted.discard(relpath)
            self._save_adopted()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, size)
            self._record(relpath, fd)
        finally:
            os.close(fd)
        with self._lock:
            self.done.difference_update(self._file_chunks[relpath])

    def _drop_broken_adoptions(self) -> None:
        """An adopted file whose chunks did not all verify is a link to a copy
        that changed: replace it by a file of our own before anything writes."""
        for entry in self.manifest.files:
            if entry.path not in self._adopted:
                continue
            if all(i in self.done for i in self._file_chunks[entry.path]):
                continue
            dir_fd, name = self._parent(entry.path, create=False)
            try:
                self._fresh_file(entry.path, entry.size, dir_fd, name)
            finally:
                os.close(dir_fd)

    def _reverify(self, claimed: set[int]) -> set[int]:
        """Re-hash every chunk the journal claims; keep only those that match."""
        return self._matching(sorted(claimed))

    def _matching(self, indices: list[int]) -> set[int]:
        """Of ``indices``, the chunks whose bytes in the partial files hash to
        the manifest (read and hashed by REREAD_THREADS threads; a file that
        cannot be opened or read matches nothing)."""
        fds: dict[str, int] = {}  # -1: could not open
        good: set[int] = set()

        def matches(index: int) -> bool:
            path, chunk = self._chunks[index]
            fd = fds[path]
            try:
                data = os.pread(fd, chunk.length, chunk.offset) if fd >= 0 else b""
            except OSError:
                return False
            return len(data) == chunk.length and chunk_hash(data) == chunk.digest

        try:
            for path in {self._chunks[i][0] for i in indices}:
                try:
                    fds[path] = self._open_file(path, create=False)
                except (OSError, StoreError):
                    fds[path] = -1
            with ThreadPoolExecutor(REREAD_THREADS, "p2pckpt-reread") as pool:
                for start in range(0, len(indices), _REREAD_BATCH):
                    batch = indices[start : start + _REREAD_BATCH]
                    oks = pool.map(matches, batch)
                    good.update(i for i, ok in zip(batch, oks, strict=True) if ok)
        finally:
            for fd in fds.values():
                if fd >= 0:
                    os.close(fd)
        return good

    def _write_journal_fresh(self) -> None:
        """Rewrite the journal to exactly the verified set (drops a torn tail)."""
        self._close_journal()
        with self._lock:
            done = sorted(self.done)
        body = journal.header(self.manifest.root, len(self._chunks)) + b"".join(
            journal.record(self.manifest.root, i) for i in done
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

    def _parent(self, relpath: str, create: bool) -> tuple[int, str]:
        """An fd for the directory that holds ``data/relpath``, reached
        without following any link (fd-relative walk), and the file's name."""
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
        except BaseException:
            os.close(dir_fd)
            raise
        return dir_fd, parts[-1]

    def _open_file(self, relpath: str, create: bool) -> int:
        """Open ``data/relpath`` without following any link (fd-relative walk)."""
        dir_fd, name = self._parent(relpath, create)
        try:
            flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if create else 0)
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_nlink != 1 and relpath not in self._adopted):
            os.close(fd)
            raise StoreError(f"unexpected file type in {self.path}")
        return fd

    def _record(self, relpath: str, fd: int) -> None:
        """Remember what our own change to ``relpath`` left (see ``_untouched``)."""
        self._seen[relpath] = _identity(os.fstat(fd))

    def _untouched(self, relpath: str, st: os.stat_result) -> bool:
        """Whether ``st`` is the file exactly as our last change left it. Any
        write, truncate, chmod or link changes the ctime (fine-grained once
        queried, Linux >= 6.13), and the tripwire cannot be reset from user
        space; on older kernels a write in the same clock tick as ours can
        go unseen, which only the re-read of a resumed pull covers."""
        return (
            self._seen.get(relpath) == _identity(st)
            and st.st_size == self._sizes[relpath]
            and _foreign(st, relpath in self._adopted) is None
        )

    def _check_untouched(self, relpath: str, st: os.stat_result) -> None:
        if self._untouched(relpath, st):
            return
        with self._lock:
            first = relpath not in self._touched
            self._touched.add(relpath)
        if first:
            log.warning(
                'partial file changed by something else path="%s" file="%s"'
                " (it is read back and hashed again before the commit)",
                self.path,
                relpath,
            )

    def _save_adopted(self) -> None:
        listing = "".join(f"{p}\n" for p in sorted(self._adopted)).encode()
        write_atomic(self.path / "adopted", listing)

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
        indices = self._file_chunks[relpath]
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
                with self._lock, no_space_as_error(self.dest.parent):
                    adopted = self._adopted | {relpath}
                    listing = "".join(f"{p}\n" for p in sorted(adopted)).encode()
                    write_atomic(self.path / "adopted", listing)
                    self._adopted = adopted
                    os.replace(tmp, name, dst_dir_fd=dir_fd)
                    # the tripwire starts from the link as it is now (rename moved its ctime)
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    self._seen[relpath] = _identity(st)
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
        """Verify, write at its offset, journal. Thread-safe; blocking.

        The file's lock is held from the tripwire check before the write to
        the record after it, so our writes never look like someone else's
        and someone else's never look like ours (see ``_untouched``)."""
        path, chunk = self._chunks[index]
        if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
            raise ChunkCorrupt(index)
        try:
            fd = self._open_file(path, create=False)
            try:
                view = memoryview(data)
                with self._file_locks[path]:
                    self._check_untouched(path, os.fstat(fd))
                    written = 0
                    while written < chunk.length:
                        written += os.pwrite(fd, view[written:], chunk.offset + written)
                    self._record(path, fd)
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
                raise _no_space(exc, self.dest.parent) from exc
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
                try:
                    fd = self._open_file(path, create=False)
                except (OSError, StoreError) as exc:
                    if isinstance(exc, OSError) and exc.errno not in _GONE:
                        raise
                    continue  # replaced under us: not ours to flush (nor to commit)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if journal_fd >= 0:
                os.fsync(journal_fd)
        except OSError as exc:
            self._invalidate()
            if exc.errno in _NOSPACE:
                raise _no_space(exc, self.dest.parent) from exc
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
            for entry in self.manifest.files:
                fd = self._open_file(entry.path, create=False)
                try:
                    if not self._untouched(entry.path, os.fstat(fd)):
                        raise StoreError(
                            f"partial file {entry.path!r} changed while it was being committed;"
                            " run the same pull again"
                        )
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

    def _read_back(self) -> None:
        """Hash again, from the partial files, every chunk that could have
        been changed since it was verified: all of them if this partial copy
        existed before this run (``resumed``: a crash, a kill, days on disk),
        else those of each file the tripwire caught (``_untouched``). A file
        longer than declared is cut back first; one no longer ours (another
        owner, or an adopted file whose copy changed size) counts as wholly
        bad. Raises ChunkCorrupt naming the first bad chunk after dropping
        every bad one from the journal (the partial copy stays resumable)."""
        started = time.monotonic()
        bad: set[int] = set()
        for entry in self.manifest.files:
            if not self._settle(entry.path, entry.size):
                bad.update(self._file_chunks[entry.path])
        paths = set(self._sizes) if self.resumed else self._touched
        indices = [i for i, (path, _) in enumerate(self._chunks) if path in paths and i not in bad]
        if not indices and not bad:
            self.reread = 0
            return
        good = self._matching(indices)
        bad.update(i for i in indices if i not in good)
        self.reread = sum(self._chunks[i][1].length for i in indices)
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
            f"{self._chunks[first][0]!r} changed in the partial copy {self.path} after it was"
            f" written and verified ({len(bad)} chunk(s) no longer match); nothing was"
            " committed: run the same pull again to fetch them again",
        )

    def _settle(self, relpath: str, size: int) -> bool:
        """Before the read-back: a file the tripwire caught is given back its
        declared size (bytes past the end must not be committed) and mode,
        and the tripwire restarts from there, so a change during the
        read-back still shows at commit. False if the file can no longer be
        ours (a link, another owner, a second link, an adopted file whose
        copy changed size): all its chunks count as bad."""
        adopted = relpath in self._adopted
        flags = (os.O_RDONLY if adopted else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            dir_fd, name = self._parent(relpath, create=False)
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if exc.errno in _GONE:
                self._touched.add(relpath)
                return False
            raise
        try:
            st = os.fstat(fd)
            if self._untouched(relpath, st):
                return True
            self._touched.add(relpath)
            if _foreign(st, adopted) is not None or (adopted and st.st_size != size):
                return False
            if not adopted:
                if st.st_size != size:
                    os.ftruncate(fd, size)
                if stat.S_IMODE(st.st_mode) != 0o600:
                    _make_private(fd)
            self._record(relpath, fd)
            return True
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
