"""Which files of a version a selective pull takes (issue 19).

``hf download`` semantics: a file is taken if its path matches any
``--include`` pattern (or none is given) and no ``--exclude`` pattern.
Patterns are ``fnmatch`` globs (case-sensitive, ``*`` also crosses ``/``)
over the manifest's relative POSIX paths, which were validated when the
manifest was decoded: a pattern only filters those paths, it never names a
path of its own, so nothing it says can reach outside DEST.

A selection is a frozenset of manifest paths, or None for the whole
version (the catalog stores it as sorted lines, ``pack``/``unpack``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from p2pckpt.errors import ConfigError
from p2pckpt.manifest.manifest import Manifest

Selection = frozenset[str] | None


def check_patterns(flag: str, patterns: Sequence[str]) -> None:
    """Refuse an empty pattern or one with a control character (a typo, or
    something no manifest path can hold)."""
    for pattern in patterns:
        if not pattern or any(ord(c) < 32 or ord(c) == 127 for c in pattern):
            raise ConfigError(f"{flag} {pattern!r}: not a usable glob")


def matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``path`` is taken: it matches an include (or there is none)
    and no exclude."""
    if include and not any(fnmatchcase(path, p) for p in include):
        return False
    return not any(fnmatchcase(path, p) for p in exclude)


def select(manifest: Manifest, include: Sequence[str], exclude: Sequence[str]) -> Selection:
    """The files of ``manifest`` the patterns take: None when that is all of
    them (no pattern given, or every file matches). A selection matching no
    file is a ConfigError (exit 2), raised before anything is transferred."""
    if not include and not exclude:
        return None
    chosen = frozenset(f.path for f in manifest.files if matches(f.path, include, exclude))
    if not chosen:
        given = [f"--include {p}" for p in include] + [f"--exclude {p}" for p in exclude]
        raise ConfigError(
            f"{' '.join(given)} matches no file of {manifest.name}@{manifest.version}"
            f" ({len(manifest.files)} file(s); see p2pckpt ls {manifest.name}@{manifest.version}"
            " --files)"
        )
    return None if len(chosen) == len(manifest.files) else chosen


def union(a: Selection, b: Selection) -> Selection:
    """Both selections together (None, the whole version, absorbs anything)."""
    if a is None or b is None:
        return None
    return a | b


def covers(a: Selection, b: Selection) -> bool:
    """Whether selection ``a`` holds every file of ``b``."""
    if a is None:
        return True
    return b is not None and b <= a


def normalise(manifest: Manifest, selection: Iterable[str] | None) -> Selection:
    """Only paths of ``manifest``; None if that is every file."""
    if selection is None:
        return None
    paths = {f.path for f in manifest.files}
    chosen = frozenset(p for p in selection if p in paths)
    return None if chosen == paths else chosen


def pack(selection: Selection) -> str | None:
    """The catalog's form: sorted paths, one a line (paths hold no newline)."""
    return None if selection is None else "\n".join(sorted(selection))


def unpack(text: str | None) -> Selection:
    return None if text is None else frozenset(text.split("\n")) if text else frozenset()
