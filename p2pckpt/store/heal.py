"""Healing a partial copy (issue 13): what an earlier run, a crash or someone
else left in the staging directory never fails every later run.

On resume the directory must be ours and not a link (refused otherwise);
open to other users, it is made 0700 again and, if others could write it,
started over (``claim_dir``, ``start_over``). A file longer or shorter than declared is
truncated to its declared size, a missing one created again, a link or
anything not a plain file of ours replaced (``heal_tree``); what the journal
claims is re-hashed either way (R-46). Before the commit's read-back a file
the tripwire caught is given back its declared size and mode (``settle``).
See staging.py for when each runs, and docs/protocol.md §5.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from p2pckpt.errors import NO_SPACE_ERRNOS, StoreError
from p2pckpt.fs.remove import remove
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.store.partial_files import ADOPT_TMP, GONE, PartialFiles, foreign, make_private

log = logging.getLogger("p2pckpt.staging")


def claim_dir(path: Path) -> bool:
    """Create the staging directory 0700, or check the one that is there:
    ours and a real directory (never a link), else refused. If it is
    open to other users its mode is fixed; returns True if others could
    write into it, so nothing in it is trusted (R-54, R-57)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(
                f"{path} exists and is not a directory (a link or a file); not using it"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise StoreError(f"{path} exists and is not ours")
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o077:
            return False
        if not make_private(fd, 0o700):
            return False  # a filesystem without modes (vfat): nothing to fix, or trust less
        writable = bool(mode & 0o022)
        log.warning(
            'partial copy was open to other users path="%s" mode=%o (made it 0700%s)',
            path,
            mode,
            "; starting it over, as anyone could have replaced what it held" if writable else "",
        )
        return writable
    finally:
        os.close(fd)


def open_lock(path: Path) -> int:
    """Open the lock file of the staging directory ``path``: a plain file of
    ours with one link; anything else in its place (a link, a FIFO, a
    directory) is removed first."""
    lock = path / "lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(2):
        try:
            fd = os.open(lock, flags, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            remove(lock)
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1:
            return fd
        os.close(fd)
        remove(lock)
    raise StoreError(f"{lock} keeps being replaced; not using {path}")


PREVIOUS = "previous"  # a partial copy of another version, kept for its chunks


def _another_version(path: Path, envelope: bytes) -> bool:
    """The staging area holds a partial copy (data and journal) of a version
    other than ``envelope``'s, in a plain directory of its own."""
    try:
        theirs = (path / "manifest").read_bytes()
        return theirs != envelope and stat.S_ISDIR(os.lstat(path / "data").st_mode)
    except OSError:
        return False


def start_over(files: PartialFiles, manifest: Manifest, envelope: bytes, keep: bool = True) -> None:
    """Drop any partial state (damaged) and lay out an empty copy: the signed
    ``envelope``, and each file at its declared size. A partial copy of
    another version is not dropped but kept aside as PREVIOUS (its data,
    manifest and journal), so the pull reuses what it verified (issue 18:
    a pull interrupted at version N and rerun once N+1 is out)."""
    path = files.path
    files.close_dirs()  # they belong to the tree about to go
    remove(path / PREVIOUS)  # at most one other version is kept
    if keep and _another_version(path, envelope):
        os.mkdir(path / PREVIOUS, 0o700)
        for name in ("data", "manifest", "journal"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path / name, path / PREVIOUS / name)
        log.info('kept partial copy of another version path="%s" (its chunks are reused)', path)
    elif os.path.lexists(path / "data"):
        log.warning(
            'discarding partial copy path="%s" (damaged, or in a place others could write)', path
        )
    for name in ("data", "journal", "journal.tmp", "manifest", "adopted", ADOPT_TMP):
        remove(path / name)
    files.adopted = set()
    files.seen = {}
    os.mkdir(path / "data", 0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path / "manifest", flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(envelope)
        os.fsync(f.fileno())
    for entry in files.entries:  # only the files selected (issue 19)
        fd = files.open(entry.path, create=True)
        try:
            os.ftruncate(fd, entry.size)  # sizes were preflighted
            files.record(entry.path, fd)
        finally:
            os.close(fd)


def heal_tree(files: PartialFiles, manifest: Manifest) -> bool:
    """Make the files of a partial copy being resumed what this run needs:
    each a plain file of ours (0600, one link) of its declared size.
    Returns False if the tree itself is damaged (a directory replaced by
    a link or a file, or not ours): then it starts over."""
    try:
        fd = os.open(files.path / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            return False
        if stat.S_IMODE(st.st_mode) & 0o077:
            make_private(fd, 0o700)
    finally:
        os.close(fd)
    for entry in files.entries:
        try:
            heal_file(files, entry.path, entry.size)
        except (OSError, StoreError) as exc:
            if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
                raise
            log.warning(
                'partial copy is damaged path="%s" file="%s" error="%s" (starting it over)',
                files.path,
                entry.path,
                exc,
            )
            return False
    drop_unselected(files, manifest)
    return True


def drop_unselected(files: PartialFiles, manifest: Manifest) -> None:
    """Remove the files of a partial copy that this run does not select (an
    earlier run took more): only the selected files may reach DEST."""
    if files.selection is None:
        return
    for entry in manifest.files:
        if entry.path in files.selection:
            continue
        try:
            dir_fd, name = files.parent(entry.path, create=False)
        except OSError:
            continue  # its folder is not there: nor is it
        try:
            remove(name, dir_fd)
        finally:
            os.close(dir_fd)


def prune_empty_dirs(data: Path) -> None:
    """Remove the folders of ``data`` left empty (a selective pull: folders
    whose files were not selected), deepest first; never follows links."""
    for dirpath, _, _ in os.walk(data, topdown=False, followlinks=False):
        if dirpath != str(data):
            with contextlib.suppress(OSError):  # not empty: kept
                os.rmdir(dirpath)


def heal_file(files: PartialFiles, relpath: str, size: int) -> None:
    """One file of a resumed partial copy: replaced if it is not ours (or an
    adopted file whose copy changed), else given its declared size and mode."""
    dir_fd, name = files.parent(relpath, create=True)
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        adopted = relpath in files.adopted
        problem = "missing" if st is None else foreign(st, adopted)
        if problem is None and adopted and st is not None and st.st_size != size:
            problem = "linked copy changed"  # never write into the file it is linked to
        if problem is not None:
            log.warning(
                'replacing partial file path="%s" file="%s" (%s; its chunks are fetched again)',
                files.path,
                relpath,
                problem,
            )
            fresh_file(files, relpath, size, dir_fd, name)
            return
        assert st is not None
        _fix_file(files, relpath, size, dir_fd, name, st)
    finally:
        os.close(dir_fd)


def _fix_file(
    files: PartialFiles, relpath: str, size: int, dir_fd: int, name: str, st: os.stat_result
) -> None:
    """A file of ours (``st``, as found): truncated to ``size`` and made 0600
    unless adopted, and recorded for the tripwire."""
    adopted = relpath in files.adopted
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
                files.path,
                relpath,
                now.st_size,
                size,
            )
            os.ftruncate(fd, size)
        if not adopted and stat.S_IMODE(now.st_mode) != 0o600:
            make_private(fd)
        files.record(relpath, fd)
    finally:
        os.close(fd)


def fresh_file(files: PartialFiles, relpath: str, size: int, dir_fd: int, name: str) -> None:
    """Put an empty file of ``size`` bytes, ours alone, at ``name`` in place
    of whatever is there. Its chunks are no longer ours: the caller drops
    them from what is done."""
    remove(name, dir_fd)
    if relpath in files.adopted:
        files.adopted.discard(relpath)
        files.save_adopted()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
        files.record(relpath, fd)
    finally:
        os.close(fd)


def settle(files: PartialFiles, relpath: str, size: int) -> bool:
    """Before the read-back: a file the tripwire caught is given back its
    declared size (bytes past the end must not be committed) and mode,
    and the tripwire restarts from there, so a change during the
    read-back still shows at commit. False if the file can no longer be
    ours (a link, another owner, a second link, an adopted file whose
    copy changed size): all its chunks count as bad."""
    adopted = relpath in files.adopted
    flags = (os.O_RDONLY if adopted else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        dir_fd, name = files.parent(relpath, create=False)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno in GONE:
            files.touched.add(relpath)
            return False
        raise
    try:
        st = os.fstat(fd)
        if files.untouched(relpath, st):
            return True
        files.touched.add(relpath)
        if foreign(st, adopted) is not None or (adopted and st.st_size != size):
            return False
        if not adopted:
            if st.st_size != size:
                os.ftruncate(fd, size)
            if stat.S_IMODE(st.st_mode) != 0o600:
                make_private(fd)
        files.record(relpath, fd)
        return True
    finally:
        os.close(fd)
