"""Gather a :class:`Snapshot` of a watched child: the I/O half of ``completion.py``.

Blocking (the watcher calls it in a worker thread). It only stats files —
plus, for the "index" rule, reads safetensors headers and the index — so it
is cheap enough to repeat whenever a child may have settled.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from p2pckpt.config import WatchSpec
from p2pckpt.daemon.completion import INDEX_FILE, Snapshot, header_length, safetensors_complete
from p2pckpt.manifest.manifest import MAX_FILES

MAX_INDEX_BYTES: Final = 64 << 20  # a real index is ~100 KB; a longer one reads as malformed


def _header_ok(path: Path, size: int) -> bool:
    """Whether a safetensors file's header says it is fully written."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            first = f.read(8)
            n = header_length(first)
            return n is not None and 8 + n <= size and safetensors_complete(first + f.read(n), size)
    except OSError:
        return False


def gather(path: Path, spec: WatchSpec) -> Snapshot | None:
    """Snapshot one child (blocking: call it in a thread); None if it is gone
    or is neither a regular file nor a directory. Directories are walked
    without following links; an unreadable subdirectory raises rather than
    being left out (which would make a partial tree look whole)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    index_rule = spec.complete == "index"
    if stat.S_ISREG(st.st_mode):
        marker = path.with_name(f"{path.name}.{spec.marker}")
        shard = index_rule and path.name.endswith(".safetensors") and _header_ok(path, st.st_size)
        return Snapshot(
            "file",
            {path.name: (st.st_size, st.st_mtime_ns)},
            marker=spec.complete == "marker" and os.path.lexists(marker),
            complete_shards=frozenset([path.name] if shard else []),
        )
    if not stat.S_ISDIR(st.st_mode):
        return None
    files: dict[str, tuple[int, int]] = {}
    dirs: set[str] = set()
    problem = ""

    def fail(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(path, onerror=fail):
        base = Path(dirpath)
        for name in dirnames + filenames:
            rel = (base / name).relative_to(path).as_posix()
            try:
                fst = (base / name).lstat()
            except FileNotFoundError:
                continue  # renamed away mid-walk: the next snapshot differs anyway
            if stat.S_ISDIR(fst.st_mode):
                dirs.add(rel)
            elif stat.S_ISREG(fst.st_mode):
                files[rel] = (fst.st_size, fst.st_mtime_ns)
            else:
                problem = problem or f"{rel!r} is a link or special file"
        if len(files) > MAX_FILES:
            return Snapshot("dir", files, frozenset(dirs), f"more than {MAX_FILES} files")
    index: bytes | None = None
    done: frozenset[str] = frozenset()
    if index_rule and not problem:
        done = frozenset(
            p
            for p, (size, _) in files.items()
            if p.endswith(".safetensors") and _header_ok(path / p, size)
        )
        if INDEX_FILE in files:
            try:
                with open(os.open(path / INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                    index = f.read(MAX_INDEX_BYTES)
            except FileNotFoundError:
                index = b""  # replaced mid-look: malformed for now, seen whole next time
    return Snapshot("dir", files, frozenset(dirs), problem, False, index, done)
