"""Removing whatever is at a path, without following links."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def remove(path: Path | str, dir_fd: int | None = None) -> None:
    """Remove whatever ``path`` is (a tree is removed without following links)."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, dir_fd=dir_fd)
    else:
        os.unlink(path, dir_fd=dir_fd)
