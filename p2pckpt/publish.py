"""Publishing: hash a checkpoint in place, sign its manifest, record it.

The bytes are not copied: the catalog points at the original file or
directory, and the seeder re-checks each chunk's hash when serving it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from p2pckpt.errors import ConfigError, ManifestError, SourceChanged
from p2pckpt.home import Home
from p2pckpt.interop.hfcache import is_snapshot, walk_snapshot
from p2pckpt.manifest.chunker import hash_reader
from p2pckpt.manifest.formats import gguf_cuts, zip_cuts
from p2pckpt.manifest.layout import plan, safetensors_cuts, safetensors_header_length
from p2pckpt.manifest.manifest import (
    EXPIRES_KEY,
    IN_PROGRESS_KEY,
    MAX_META,
    MAX_META_KEY,
    MAX_META_VALUE,
    MAX_VERSION,
    RESERVED_META,
    FileEntry,
    Manifest,
    MetaValue,
    encode_meta,
    sign,
    validate_name,
)
from p2pckpt.manifest.walk import SourceFile, walk


def parse_meta(pairs: list[str]) -> dict[str, str]:
    """``K=V`` strings into a dict, with the manifest's limits."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta takes KEY=VALUE, got {pair!r}")
        if key in meta:
            raise ConfigError(f"--meta {key!r} given twice")
        meta[key] = value
    check_meta(meta)
    return meta


def check_meta(meta: Mapping[str, object], *, ours: bool = False) -> None:
    """The manifest's limits, checked before signing: a manifest that pullers
    would refuse must not be published. Keys under ``p2pckpt.`` are ours
    (``ours``: the final meta, with the expiry added), never a caller's."""
    if not ours and any(isinstance(k, str) and k.startswith(RESERVED_META) for k in meta):
        raise ConfigError(f"meta keys starting with {RESERVED_META!r} are reserved")
    if len(meta) > MAX_META:
        raise ConfigError(f"at most {MAX_META} meta entries")
    for key, value in meta.items():
        if not (isinstance(key, str) and isinstance(value, str)):  # callers pass floats
            raise ConfigError(f"meta keys and values are strings, got {key!r}: {value!r}")
        if not (0 < len(key) <= MAX_META_KEY and key.isprintable()):
            raise ConfigError(f"meta key {key[:20]!r}: 1 to {MAX_META_KEY} printable characters")
        if len(value) > MAX_META_VALUE:
            raise ConfigError(f"meta {key!r}: value longer than {MAX_META_VALUE} characters")


def wire_meta(meta: Mapping[str, MetaValue] | None) -> dict[str, str]:
    """A caller's meta (strings, ints, floats, bools) checked and encoded as
    the manifest carries it (``encode_meta``: strings, so older nodes read it)."""
    given = dict(meta or {})
    reserved = sorted(k for k in given if isinstance(k, str) and k.startswith(RESERVED_META))
    if reserved:
        raise ConfigError(f"meta keys starting with {RESERVED_META!r} are reserved: {reserved}")
    encoded = encode_meta(given)
    check_meta(encoded, ours=True)
    return encoded


# What `ls` calls a checkpoint's format, by file extension (weights only:
# configs, tokenizers and READMEs say nothing about the format).
FORMATS = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".bin": "pytorch",
    ".ckpt": "ckpt",
    ".onnx": "onnx",
    ".h5": "keras",
    ".keras": "keras",
    ".msgpack": "flax",
    ".npz": "numpy",
    ".npy": "numpy",
    # torch.distributed.checkpoint's shards (the hooks' name for it too): a
    # multi-host version's format is found over every host's files this way
    ".distcp": "distcp",
}


def detect_format(relpaths: list[str]) -> str | None:
    """``safetensors``, ``pytorch``, ``gguf``... or several joined by ``+``."""
    found = {FORMATS.get(os.path.splitext(p)[1].lower()) for p in relpaths} - {None}
    return "+".join(sorted(f for f in found if f is not None)) or None


def chunk_plan(fd: int, src: SourceFile) -> list[tuple[int, int]]:
    """Chunk boundaries for one file: tensor-aligned for safetensors and GGUF,
    entry-aligned for zip archives (``torch.save``), else fixed."""
    if src.relpath.endswith(".safetensors"):
        n = safetensors_header_length(os.pread(fd, 8, 0), src.size)
        if n is not None:
            return plan(src.size, safetensors_cuts(os.pread(fd, 8 + n, 0), src.size))
    magic = os.pread(fd, 4, 0)

    def read(offset: int, n: int) -> bytes:
        return os.pread(fd, n, offset)

    if magic == b"GGUF":
        return plan(src.size, gguf_cuts(read, src.size))
    if magic == b"PK\x03\x04":
        return plan(src.size, zip_cuts(read, src.size))
    return plan(src.size)


def _check_args(
    name: str, meta: Mapping[str, MetaValue] | None, version: int | None, expires: int | None
) -> None:
    """The arguments of ``publish`` that can be refused without reading a byte."""
    try:
        validate_name(name)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None
    wire_meta(meta)
    if version is not None and not 0 <= version <= MAX_VERSION:
        raise ConfigError(f"a version is a whole number from 0 to {MAX_VERSION}")
    if expires is not None and not time.time() < expires < 10**12:
        raise ConfigError("an expiry must lie in the future")


def _hash_file(home: Home, src: SourceFile, on_bytes: Callable[[int], None] | None) -> FileEntry:
    """One file's entry: its chunks as hashed before if it is unchanged since
    (no second read), else hashed now and remembered."""
    stat_key = (src.size, src.mtime_ns, src.ino, src.ctime_ns)
    cached = home.catalog.hashed_chunks(str(src.path), stat_key)
    if cached is not None:
        if on_bytes is not None:
            on_bytes(src.size)
        return FileEntry(src.relpath, src.size, cached)
    started_ns = time.time_ns()
    fd = os.open(src.path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            chunks = hash_reader(f, src.size, on_bytes, bounds=chunk_plan(fd, src))
        except EOFError as exc:
            raise SourceChanged(f"{src.relpath!r} shrank while publishing") from exc
        st = os.fstat(f.fileno())
    if st.st_size != src.size or st.st_mtime_ns != src.mtime_ns:
        raise SourceChanged(f"{src.relpath!r} changed while publishing; try again")
    home.catalog.remember_hashed(str(src.path), stat_key, started_ns, tuple(chunks))
    return FileEntry(src.relpath, src.size, tuple(chunks))


def publish(
    home: Home,
    path: Path,
    name: str,
    version: int | None = None,
    meta: Mapping[str, MetaValue] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    expires: int | None = None,
) -> Manifest:
    """Hash ``path`` (a file or a directory) and publish it as ``name@version``.

    ``meta`` values may be strings, ints, floats or bools (``wire_meta``).

    ``expires`` (seconds since the epoch) is signed into the manifest:
    followers refuse the version as "latest" after it (publish again, a new
    version, to extend it; unchanged files are not re-read)."""
    _check_args(name, meta, version, expires)  # before hashing: fail fast
    root = path.expanduser().absolute()
    try:
        if is_snapshot(root):  # a Hugging Face cache snapshot: its links' blobs
            kind, sources = "dir", walk_snapshot(root)
        else:
            kind, sources = walk(root)
    except ManifestError as exc:  # a link, special file or unportable name here
        raise ConfigError(str(exc)) from None
    if on_total is not None:
        on_total(sum(s.size for s in sources))
    entries = [_hash_file(home, src, on_bytes) for src in sources]
    given = wire_meta(meta)
    final = dict(given)
    fmt = detect_format([s.relpath for s in sources])
    if fmt is not None:
        final.setdefault("format", fmt)
    if expires is not None:
        final[EXPIRES_KEY] = str(int(expires))
    check_meta(final, ours=True)
    # Publishing the same bytes and meta again is a no-op: with an explicit
    # version, if that version holds them; without one, if the newest does
    # (a version published before formats were detected counts as the same).
    existing = home.catalog.find(name, version, publisher=home.key.peer_id.key)
    if existing is not None:
        old = existing.manifest()
        if old.kind == kind and old.files == tuple(entries) and dict(old.meta) in (final, given):
            home.catalog.add(old, existing.envelope, root, "published")
            return old
        if version is not None:
            raise ConfigError(
                f"{name}@{version} is already published with other content; use a new --version"
            )
    if version is None:
        version = home.catalog.next_version(name)
    manifest, envelope = _sign_new(home, name, version, final, kind, entries)
    home.catalog.add(manifest, envelope, root, "published")
    return manifest


def _sign_new(
    home: Home,
    name: str,
    version: int,
    meta: dict[str, str],
    kind: str,
    entries: list[FileEntry],
) -> tuple[Manifest, bytes]:
    """A manifest of this node's, made now and signed (a version or an
    in-progress one: ``meta`` says which)."""
    manifest = Manifest(
        name=name,
        version=version,
        publisher=home.key.peer_id,
        created=int(time.time()),
        meta=meta,
        kind=kind,
        files=tuple(entries),
    )
    return sign(manifest, home.key)


def publish_in_progress(
    home: Home,
    path: Path,
    name: str,
    version: int,
    files: frozenset[str],
    sequence: int,
    meta: Mapping[str, MetaValue] | None = None,
) -> tuple[Manifest, bytes]:
    """Hash the finished ``files`` of the directory ``path`` (still being
    written) and sign them as an in-progress manifest of ``name@version``
    (issue 21; ``manifest.verify_in_progress``). Nothing is catalogued: the
    caller offers it (``transfer/progress_book.py``) until the version is
    published whole, which re-reads nothing that is unchanged since (the
    hashes are remembered by file identity, as for any publish)."""
    _check_args(name, meta, version, None)
    root = path.expanduser().absolute()
    try:
        kind, sources = walk(root)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None
    chosen = [s for s in sources if s.relpath in files]
    if kind != "dir" or not chosen:
        raise ConfigError(f"{root}: nothing finished to offer in progress")
    entries = [_hash_file(home, src, None) for src in chosen]
    final = wire_meta(meta)
    final[IN_PROGRESS_KEY] = str(sequence)
    check_meta(final, ours=True)
    return _sign_new(home, name, version, final, "dir", entries)
