"""Find the files of a checkpoint on disk, refusing links and special files (R-42)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from p2pckpt.errors import ConfigError, UnsafePath
from p2pckpt.manifest.manifest import MAX_FILES
from p2pckpt.manifest.paths import validate_path_set


@dataclass(frozen=True, slots=True)
class SourceFile:
    relpath: str
    path: Path
    size: int
    mtime_ns: int
    ino: int = 0
    ctime_ns: int = 0  # changes on every write and cannot be set back (unlike mtime)


def walk(root: Path) -> tuple[str, list[SourceFile]]:
    """Return ``(kind, files)`` for a file or a directory checkpoint.

    Symlinks, devices, FIFOs and sockets are refused rather than followed or
    skipped: a checkpoint that silently lost a shard is worse than an error.
    """
    try:
        st = root.lstat()
    except FileNotFoundError:
        raise ConfigError(f"{root}: no such file or directory") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{root} is a symlink; publish its target instead")
    if stat.S_ISREG(st.st_mode):
        validate_path_set([root.name])
        return "file", [
            SourceFile(root.name, root, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        ]
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{root} is not a regular file or directory")
    files: list[SourceFile] = []

    def unreadable(exc: OSError) -> None:
        # A subdirectory we cannot list must fail the publish, not vanish from it.
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            full = Path(dirpath, name)
            fst = full.lstat()
            rel = full.relative_to(root).as_posix()
            if not stat.S_ISREG(fst.st_mode):
                raise UnsafePath(f"{rel!r} in {root} is a link or special file; refusing")
            files.append(
                SourceFile(rel, full, fst.st_size, fst.st_mtime_ns, fst.st_ino, fst.st_ctime_ns)
            )
            if len(files) > MAX_FILES:
                raise ConfigError(f"{root} has more than {MAX_FILES} files")
    if not files:
        raise ConfigError(f"{root} contains no files")
    files.sort(key=lambda f: f.relpath)
    validate_path_set([f.relpath for f in files])
    return "dir", files
