"""syncfs(2): one call makes everything written to a filesystem durable.

A pull of thousands of small files would otherwise fsync each one in turn
(one device flush each); syncfs writes them back together and flushes once.
Since Linux 5.8 it also reports a writeback error seen on the filesystem
since ``fd`` was opened (the same guarantee fsync gives for one file), so
the fd must be one held since the writes began.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        found: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return None
    return found


_SYNCFS = _libc_syncfs()


def syncfs_available() -> bool:
    return _SYNCFS is not None


def syncfs(fd: int) -> None:
    """Make every write to ``fd``'s filesystem durable; OSError on failure."""
    if _SYNCFS is None:  # pragma: no cover - callers check syncfs_available
        raise OSError("syncfs is not available here")
    if _SYNCFS(fd):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
