"""Renames that never replace by accident: renameat2(2) NOREPLACE and EXCHANGE."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from p2pckpt.errors import DestinationExists

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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
