"""Validation of the relative paths carried by checkpoint manifests (R-36, R-41).

A manifest comes from a peer and names the files a pull will create under its
destination directory. Every name is checked against a strict, portable
grammar before anything touches the filesystem:

* relative, ``/``-separated and already clean: no empty, ``.`` or ``..``
  components, no leading or trailing ``/`` -- so a name can never leave the
  destination, whatever the platform's path rules;
* portable: nothing Windows or macOS would refuse or silently alter
  (backslash, ``<>:"|?*``, names ending in space or dot, device names such as
  ``NUL`` or ``com1.tar.gz``, non-NFC text, case-fold collisions);
* not deceptive: no control characters (C0, DEL, C1) that a terminal would
  interpret, and no bidi or zero-width characters that make ``x\\u202eexe.bin``
  look like something else;
* bounded: per-component, total length and depth caps.

Bad names are **rejected, never rewritten**. Tools that extract untrusted
archives often sanitise instead (libtorrent prefixes reserved names with
``_``), but checkpoint loaders find shards and configs by exact name
(``model-00001-of-00004.safetensors``, the index JSON that lists them), so a
rewritten name yields a checkpoint that silently fails to load -- and rewriting
can make two distinct names collide. A manifest with any unacceptable name is
refused as a whole (:class:`p2pckpt.errors.UnsafePath`).

Rejection messages quote the offending name with ``repr()``-style escaping, and
:func:`safe_display` is the helper for every other terminal or log sink (R-41):
escape sequences in received names must never reach a terminal.

This module is pure: no I/O and no global state.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from p2pckpt.errors import UnsafePath

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_DEPTH",
    "MAX_FILES",
    "MAX_PATH_BYTES",
    "safe_display",
    "validate_path_set",
    "validate_relpath",
]

MAX_COMPONENT_BYTES = 255
"""Longest path component, in UTF-8 bytes (NAME_MAX on common filesystems)."""

MAX_PATH_BYTES = 4096
"""Longest whole relative path, in UTF-8 bytes (PATH_MAX on Linux)."""

MAX_DEPTH = 64
"""Most components in one path."""

MAX_FILES = 100_000
"""Default cap on the number of paths in one manifest."""

_QUOTE_LIMIT = 200
"""Characters of an offending name quoted in an error message."""

# C0 controls, DEL, C1 controls, backslash, Windows-reserved characters, and
# bidi / zero-width characters (libtorrent ``filter_path_character``).
_FORBIDDEN_RE = re.compile(
    r'[\x00-\x1f\x7f-\x9f\\<>:"|?*'
    r"\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)

_SUPERSCRIPT_DIGITS = "\u00b9\u00b2\u00b3"
_RESERVED_STEMS = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{digit}" for dev in ("COM", "LPT") for digit in "0123456789" + _SUPERSCRIPT_DIGITS}
)
"""Windows device names, reserved with any extension and case (``nul.txt.jpg``)."""


def safe_display(s: str) -> str:
    """Return ``s`` unchanged if printable, else its ``repr()`` (escapes controls, bidi)."""
    if s.isprintable():
        return s
    return repr(s)


def _quote(path: str) -> str:
    """Quote a (possibly huge, possibly hostile) name for an error message."""
    if len(path) > _QUOTE_LIMIT:
        return f"{path[:_QUOTE_LIMIT]!r}... ({len(path)} characters)"
    return repr(path)


def _reject(path: str, reason: str) -> UnsafePath:
    """Build the error for ``path``; the name is always escaped (R-41)."""
    return UnsafePath(f"unsafe manifest path {_quote(path)}: {reason}")


def _is_reserved_device(component: str) -> bool:
    """Whether Windows treats ``component`` as a device (``NUL``, ``nul .txt``, ``COM1.a.b``)."""
    stem = component.partition(".")[0].rstrip(" ")
    return stem.upper() in _RESERVED_STEMS


def validate_relpath(path: str) -> str:
    """Return ``path`` unchanged if it is a safe, portable manifest path; else raise UnsafePath."""
    if not isinstance(path, str):
        raise UnsafePath(f"manifest path must be a string, not {type(path).__name__}")
    if not path:
        raise _reject(path, "empty path")
    if len(path) > MAX_PATH_BYTES:  # every character is at least one byte
        raise _reject(path, f"longer than {MAX_PATH_BYTES} bytes")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise _reject(path, "not encodable as UTF-8 (lone surrogate)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise _reject(path, f"longer than {MAX_PATH_BYTES} bytes")

    bad = _FORBIDDEN_RE.search(path)
    if bad is not None:
        ch = bad.group()
        if ch == "\\":
            kind = "backslash"
        elif ch in '<>:"|?*':
            kind = "Windows-reserved character"
        elif unicodedata.category(ch) == "Cc":
            kind = "control character"
        else:
            kind = "bidi or zero-width character"
        raise _reject(path, f"{kind} U+{ord(ch):04X} at offset {bad.start()}")

    if not unicodedata.is_normalized("NFC", path):
        raise _reject(path, "not in Unicode NFC form")
    if path.startswith("/"):
        raise _reject(path, "absolute path")
    if path.endswith("/"):
        raise _reject(path, "trailing '/'")

    components = path.split("/")
    if len(components) > MAX_DEPTH:
        raise _reject(path, f"deeper than {MAX_DEPTH} components")
    for component in components:
        if not component:
            raise _reject(path, "empty component ('//')")
        if component in (".", ".."):
            raise _reject(path, f"{component!r} component")
        if component[-1] in " .":
            raise _reject(path, "component ends in space or dot")
        if _is_reserved_device(component):
            raise _reject(path, f"reserved device name {component!r}")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _reject(path, f"component longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def _fold(path: str) -> str:
    """Case-insensitive identity of a name: NFC, casefolded, NFC again."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def validate_path_set(paths: Iterable[str], max_files: int = MAX_FILES) -> None:
    """Check every path and the set as a whole; raise UnsafePath on the first problem.

    Beyond :func:`validate_relpath`: at most ``max_files`` entries; no duplicates;
    no two names (files or directories) equal after case folding; no file that is
    also a directory of another file (``a`` and ``a/b``).
    """
    if max_files < 0:
        raise ValueError("max_files must be >= 0")
    seen: set[str] = set()
    files: dict[str, str] = {}  # folded file path -> path
    dirs: dict[str, str] = {}  # folded directory prefix -> prefix as first spelled
    for count, path in enumerate(paths, start=1):
        if count > max_files:
            raise UnsafePath(f"manifest lists more than {max_files} files")
        validate_relpath(path)
        if path in seen:
            raise _reject(path, "duplicate path")
        seen.add(path)

        key = _fold(path)
        other = files.get(key)
        if other is not None:
            raise _reject(path, f"differs only in case from {_quote(other)}")
        other = dirs.get(key)
        if other is not None:
            raise _reject(path, f"is a file but {_quote(other)} is a directory")

        components = path.split("/")
        for depth in range(1, len(components)):
            prefix = "/".join(components[:depth])
            prefix_key = _fold(prefix)
            other = files.get(prefix_key)
            if other is not None:
                raise _reject(
                    path, f"needs directory {_quote(prefix)} but {_quote(other)} is a file"
                )
            other = dirs.setdefault(prefix_key, prefix)
            if other != prefix:
                raise _reject(
                    path, f"directory {_quote(prefix)} differs only in case from {_quote(other)}"
                )
        files[key] = path
