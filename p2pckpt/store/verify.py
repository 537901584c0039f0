"""Check a local copy against its manifest, byte for byte (R-62).

A copy matches when it holds exactly the manifest's files (no more, no
fewer; a partial copy exactly the files of its selection, issue 19), each a
regular file of the declared size whose every chunk hashes to its manifest
entry. Links are never followed, except a Hugging Face cache snapshot's
links into its own ``blobs/`` (``locations.source_path``). Hashing runs at
disk speed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p2pckpt.manifest.chunker import chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest
from p2pckpt.manifest.select import Selection
from p2pckpt.store.locations import file_path

_BUF = 4 << 20


@dataclass
class Mismatch:
    """What differs between a copy and its manifest (empty when it matches)."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    # with every_chunk: per damaged file, what differs (its size, or which chunks)
    details: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.damaged)

    def summary(self) -> str:
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("extra", self.extra),
            ("damaged", self.damaged),
        ):
            if items:
                shown = ", ".join(repr(p) for p in items[:3])
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{label}: {shown}{more}")
        return "; ".join(parts) or "matches"


def _listed(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.add(Path(dirpath, name).relative_to(root).as_posix())
    return found


def file_problem(
    path: Path,
    entry: FileEntry,
    on_bytes: Callable[[int], None] | None = None,
    every_chunk: bool = True,
) -> str | None:
    """What is wrong with one file (None if it matches): with ``every_chunk``
    it reads all of it to name every chunk that differs (``p2pckpt verify``),
    else it stops at the first (and a read error is raised, not reported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != entry.size:
            return f"size {st.st_size}, expected {entry.size}"
        bad = []
        for i, chunk in enumerate(entry.chunks):
            data = os.pread(fd, chunk.length, chunk.offset)
            if len(data) != chunk.length or chunk_hash(data) != chunk.digest:
                bad.append(f"chunk {i} (bytes {chunk.offset}-{chunk.offset + chunk.length - 1})")
                if not every_chunk:
                    break
            if on_bytes is not None:
                on_bytes(chunk.length)
    except OSError as exc:
        if not every_chunk:
            raise
        return f"read error: {exc.strerror}"
    finally:
        os.close(fd)
    if not bad:
        return None
    shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
    return f"{len(bad)} of {len(entry.chunks)} chunks differ: {shown}"


def compare(
    path: Path,
    manifest: Manifest,
    on_bytes: Callable[[int], None] | None = None,
    every_chunk: bool = False,
    selection: Selection = None,
) -> Mismatch:
    """How ``path`` (a file, or a directory for a dir checkpoint) differs.
    ``every_chunk``: read damaged files to the end and say what differs in
    ``details`` (else stop at a file's first bad chunk). ``selection``: the
    copy should hold only these files (a partial copy)."""
    result = Mismatch()

    def check(file: Path, entry: FileEntry) -> None:
        problem = file_problem(file, entry, on_bytes, every_chunk)
        if problem is not None:
            result.damaged.append(entry.path)
            if every_chunk:
                result.details[entry.path] = problem

    if manifest.kind == "file":
        entry = manifest.files[0]
        path = file_path(path, manifest.kind, entry.path)  # a cache snapshot's link: its blob
        if not path.is_file() or path.is_symlink():
            result.missing.append(entry.path)
        else:
            check(path, entry)
        return result
    entries = [f for f in manifest.files if selection is None or f.path in selection]
    if not path.is_dir() or path.is_symlink():
        result.missing.extend(f.path for f in entries)
        return result
    present = _listed(path)
    expected = {f.path for f in entries}
    result.extra = sorted(present - expected)
    for entry in entries:
        if entry.path not in present:
            result.missing.append(entry.path)
        else:
            check(file_path(path, manifest.kind, entry.path), entry)  # a snapshot link: its blob
    return result
