"""The journal file of a partial copy (``STAGING/journal``, format in journal.py):
read on resume, rewritten whole to exactly the verified set."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p2pckpt.errors import ResumeStateInvalid
from p2pckpt.fs.atomic import fsync_dir
from p2pckpt.store import journal


def load(staging: Path, root: bytes, count: int) -> set[int] | None:
    """The chunks the journal in ``staging`` claims, or None if it cannot be
    read or belongs to another version (claims are re-hashed by the caller)."""
    try:
        with open(staging / "journal", "rb") as f:
            return journal.parse(f.read(), root, count)
    except (OSError, ResumeStateInvalid):
        return None


def write_fresh(staging: Path, root: bytes, count: int, done: Iterable[int]) -> int:
    """Rewrite the journal in ``staging`` to exactly ``done`` (drops a torn
    tail), durably; returns an fd that appends to it."""
    body = journal.header(root, count) + b"".join(journal.record(root, i) for i in done)
    tmp = staging / "journal.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
        os.fsync(f.fileno())
    os.replace(tmp, staging / "journal")
    fsync_dir(staging)
    return os.open(staging / "journal", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
