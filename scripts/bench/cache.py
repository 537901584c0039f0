"""Cold page cache: ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import BenchError

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop() -> str | None:
    """None if we may drop the page cache, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not os.access(DROP_CACHES, os.W_OK):
        return f"{DROP_CACHES} is not writable"
    return None


def drop_caches() -> float:
    """``sync`` then drop page cache, dentries and inodes; returns the seconds it took."""
    t0 = time.perf_counter()
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop caches ({DROP_CACHES}): {exc}") from exc
    return time.perf_counter() - t0
