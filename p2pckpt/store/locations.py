"""Where a stored version's bytes live on disk (the one owner of that rule).

A version is stored at a location: the file itself for a single-file
checkpoint, else a directory holding its files. Normally the bytes are read
right there, through O_NOFOLLOW, so a link is refused. The exception is a
Hugging Face hub cache snapshot, whose files are relative links into the
repository's ``blobs/``::

    CACHE/models--ORG--NAME/
        blobs/ETAG
        snapshots/COMMIT/PATH       -> ../../blobs/ETAG

A link there is followed, one level and lexically, but only into its own
repository's ``blobs/`` (R-42: never out of the checkpoint).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ("models--", "datasets--", "spaces--")


def snapshot_of(path: Path) -> Path | None:
    """The cache snapshot folder that ``path`` lies in (or is), else None."""
    for folder in (path, *path.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(_KINDS):
            return folder
    return None


def real_path(path: Path) -> Path:
    """Where the bytes of ``path`` live: for a link inside a cache snapshot,
    the blob it names if its text leads (lexically, one level, no further
    links) to ``REPO/blobs/NAME`` and ``blobs``, ``snapshots`` and the
    snapshot folder are real folders; otherwise ``path`` itself, which every
    reader opens with O_NOFOLLOW, so any other link is refused (R-42)."""
    snap = snapshot_of(path)
    if snap is None or not path.is_symlink():
        return path
    blobs = snap.parent.parent / "blobs"
    folders = [blobs, snap.parent, path.parent]
    folders += [f for f in path.parent.parents if snap in (f, *f.parents)]
    try:
        if not all(stat.S_ISDIR(f.lstat().st_mode) for f in folders):
            return path
        target = Path(os.path.normpath(path.parent / os.readlink(path)))
    except OSError:
        return path
    return target if target.parent == blobs else path


def source_path(location: Path, relpath: str) -> Path:
    """``real_path`` of ``relpath`` in a published or pulled directory."""
    return real_path(location / relpath)


def file_path(location: Path, kind: str, relpath: str) -> Path:
    """Where the bytes of the file ``relpath`` of a version of ``kind``
    (``"file"`` or ``"dir"``) stored at ``location`` live."""
    return real_path(location) if kind == "file" else source_path(location, relpath)
