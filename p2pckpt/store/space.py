"""Disk space for a pull: refused up front when it cannot fit (R-40), and a
full disk met halfway turned into NoSpace (exit 10, R-47)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from p2pckpt.errors import NO_SPACE_ERRNOS, NoSpace

FREE_RESERVE: Final = 0.01


def no_space(exc: OSError, where: Path | None = None) -> NoSpace:
    """The NoSpace error for ``exc`` (one of NO_SPACE_ERRNOS) met writing under ``where``."""
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
        if exc.errno in NO_SPACE_ERRNOS:
            raise no_space(exc, where) from exc
        raise


def check_free_space(dest: Path, needed: int) -> None:
    """Refuse up front when the declared bytes cannot fit (R-40)."""
    usage = shutil.disk_usage(dest.parent)
    reserve = int(usage.total * FREE_RESERVE)
    if needed > usage.free - reserve:
        raise NoSpace(
            f"{dest.parent} has {usage.free / 1e9:.2f} GB free; this pull needs"
            f" {needed / 1e9:.2f} GB plus a 1% reserve"
        )
