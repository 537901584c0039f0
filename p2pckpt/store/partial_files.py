"""The files of a partial copy (``STAGING/data/...``) and the tripwire on them.

Every file is reached by an fd-relative walk from ``data`` that never
follows a link (R-38). The tripwire remembers what our own last change left
on each file (device, inode, ctime, mtime): a file that looks otherwise was
changed by something else, and is read back and hashed again before the
commit (see staging.py). Files adopted from a local copy by hard link are
listed in ``STAGING/adopted``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from p2pckpt.errors import StoreError
from p2pckpt.fs.atomic import write_atomic
from p2pckpt.manifest.chunker import Chunk, chunk_hash
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.manifest.select import Selection

log = logging.getLogger("p2pckpt.staging")

ADOPT_TMP: Final = "adopt.tmp"  # in the staging directory, outside data/
MAX_HELD_DIRS: Final = 256  # directories of data/ held open, at most
REREAD_THREADS: Final = 2  # hashing threads for the read-back before commit
_REREAD_BATCH: Final = 64  # chunks handed to the pool at a time (bounded memory)
# A partial file that is gone, or has a link, directory or FIFO in its place.
GONE: Final = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO})

Identity = tuple[int, int, int, int]


def foreign(st: os.stat_result, adopted: bool) -> str | None:
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


def identity(st: os.stat_result) -> Identity:
    """The tripwire: which file, and when anyone last changed it."""
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns)


def make_private(fd: int, mode: int = 0o600) -> bool:
    """Set ``mode`` where the filesystem keeps modes at all (vfat and some
    network mounts do not, or refuse: what is in the file is hashed anyway);
    True if the mode is now ``mode``."""
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EROFS):
            raise
    return stat.S_IMODE(os.fstat(fd).st_mode) == mode


def same_file(path: Path, size: int, chunks: list[Chunk]) -> bool:
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


class PartialFiles:
    """The manifest's files under ``path/data`` (only those of ``selection``,
    if the pull takes some: issue 19): opened without following links, and
    watched by the tripwire (thread-safe where writers call). Chunk indices
    stay the whole manifest's (the wire's and the journal's)."""

    def __init__(self, path: Path, manifest: Manifest, selection: Selection = None) -> None:
        self.path = path  # the staging directory
        self.chunks = [(entry.path, chunk) for _, entry, chunk in manifest.iter_chunks()]
        self.selection = selection
        # the files this partial copy holds, in manifest order
        self.entries = tuple(e for e in manifest.files if selection is None or e.path in selection)
        self.sizes = {entry.path: entry.size for entry in self.entries}
        self.file_chunks: dict[str, range] = {}  # each file's chunk indices
        first = 0
        for entry in manifest.files:
            self.file_chunks[entry.path] = range(first, first + len(entry.chunks))
            first += len(entry.chunks)
        # the chunks this copy needs (all but those of files not selected)
        self.wanted = frozenset(i for e in self.entries for i in self.file_chunks[e.path])
        self.adopted: set[str] = set()  # files hard-linked from a local copy
        # What our own last change left on each file (``identity``). Each of
        # our writes holds the file's lock from the check before it to the
        # record after it, so any other change shows as a different ctime.
        self.seen: dict[str, Identity] = {}
        self.locks = {entry.path: threading.Lock() for entry in self.entries}
        self.touched: set[str] = set()  # files something else changed under us
        self._lock = threading.Lock()
        # Directories of data/ already reached by the walk, held open: a
        # folder of 10,000 files would otherwise walk its path (3-4 syscalls)
        # for every open. A held fd keeps pointing at the directory we
        # walked to, even if a link is swapped in for it later.
        self._dirs: dict[str, int] = {}
        self._dirs_lock = threading.Lock()

    def parent(self, relpath: str, create: bool) -> tuple[int, str]:
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

    def open(self, relpath: str, create: bool) -> int:
        """Open ``data/relpath`` without following any link (fd-relative walk
        to its directory, once: then held, see ``close_dirs``)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if create else 0)
        dir_fd, name, held = self._held_parent(relpath, create)
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        finally:
            if not held:
                os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_nlink != 1 and relpath not in self.adopted):
            os.close(fd)
            raise StoreError(f"unexpected file type in {self.path}")
        return fd

    def _held_parent(self, relpath: str, create: bool) -> tuple[int, str, bool]:
        """``parent``, from the held directories where it can be: the fd, the
        file's name, and whether the fd is held (else the caller closes it,
        past MAX_HELD_DIRS folders)."""
        folder, _, name = relpath.rpartition("/")
        with self._dirs_lock:
            dir_fd = self._dirs.get(folder)
            if dir_fd is None and len(self._dirs) < MAX_HELD_DIRS:
                dir_fd, _ = self.parent(relpath, create)
                self._dirs[folder] = dir_fd
        if dir_fd is not None:
            return dir_fd, name, True
        dir_fd, _ = self.parent(relpath, create)
        return dir_fd, name, False

    def close_dirs(self) -> None:
        """Close the held directories (when data/ is laid out afresh, and at
        the end: none may be in use by a writer then)."""
        with self._dirs_lock:
            dirs, self._dirs = self._dirs, {}
        for fd in dirs.values():
            os.close(fd)

    def record(self, relpath: str, fd: int) -> None:
        """Remember what our own change to ``relpath`` left (see ``untouched``)."""
        self.seen[relpath] = identity(os.fstat(fd))

    def untouched(self, relpath: str, st: os.stat_result) -> bool:
        """Whether ``st`` is the file exactly as our last change left it. Any
        write, truncate, chmod or link changes the ctime (fine-grained once
        queried, Linux >= 6.13), and the tripwire cannot be reset from user
        space; on older kernels a write in the same clock tick as ours can
        go unseen, which only the re-read of a resumed pull covers."""
        return (
            self.seen.get(relpath) == identity(st)
            and st.st_size == self.sizes[relpath]
            and foreign(st, relpath in self.adopted) is None
        )

    def check_untouched(self, relpath: str, st: os.stat_result) -> None:
        if self.untouched(relpath, st):
            return
        with self._lock:
            first = relpath not in self.touched
            self.touched.add(relpath)
        if first:
            log.warning(
                'partial file changed by something else path="%s" file="%s"'
                " (it is read back and hashed again before the commit)",
                self.path,
                relpath,
            )

    def save_adopted(self) -> None:
        listing = "".join(f"{p}\n" for p in sorted(self.adopted)).encode()
        write_atomic(self.path / "adopted", listing)

    def load_adopted(self) -> set[str]:
        try:
            text = (self.path / "adopted").read_text()
        except OSError:
            return set()
        return {line for line in text.splitlines() if line in self.sizes}

    def matching(self, indices: list[int]) -> set[int]:
        """Of ``indices``, the chunks whose bytes in the partial files hash to
        the manifest (read and hashed by REREAD_THREADS threads; a file that
        cannot be opened or read matches nothing)."""
        fds: dict[str, int] = {}  # -1: could not open
        good: set[int] = set()

        def matches(index: int) -> bool:
            path, chunk = self.chunks[index]
            fd = fds[path]
            try:
                data = os.pread(fd, chunk.length, chunk.offset) if fd >= 0 else b""
            except OSError:
                return False
            return len(data) == chunk.length and chunk_hash(data) == chunk.digest

        try:
            for path in {self.chunks[i][0] for i in indices}:
                try:
                    fds[path] = self.open(path, create=False)
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
