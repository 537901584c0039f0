"""The signed manifest: what one checkpoint version is, byte for byte.

Canonical encoding (msgpack, arrays only, so the bytes are unique for a value)::

    body = ["p2pckpt-manifest", 1, name, version, publisher_key, created,
            [[meta_key, meta_value], ...sorted],  kind,
            [[path, size, [[offset, length, blake3], ...]], ...sorted by path]]
    root = BLAKE3(body)
    envelope = ["p2pckpt-signed-manifest", 1, body, ed25519(SIGN_CONTEXT || root)]

Meta keys under ``p2pckpt.`` are the system's own, never a user's:
``p2pckpt.expires`` (whole seconds since the epoch) is the publisher's signed
expiry: after it, a puller refuses the version as "latest" (freeze
protection, R-21). Old nodes read it as plain meta, so it needs no new
format.

The root identifies the version everywhere (catalog, wire, journal). Decoding
validates every field and limit before anything uses it; a signature is
checked against the publisher key inside the body, and the caller decides
whether that publisher is trusted. Paths are validated at publish and pull.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack

from p2pckpt.errors import BadSignature, ConfigError, ManifestError
from p2pckpt.identity.keys import NodeKey, verify_signature
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.chunker import MAX_CHUNK, Chunk
from p2pckpt.manifest.paths import validate_path_set

_BODY_TAG = "p2pckpt-manifest"
_ENVELOPE_TAG = "p2pckpt-signed-manifest"
_FORMAT = 1
SIGN_CONTEXT = b"p2pckpt 2026 manifest signature v1\x00"
# An in-progress manifest (issue 21, streaming publish) is signed under its own
# context, so no verifier of a finished version (of any release) accepts it.
IN_PROGRESS_CONTEXT = b"p2pckpt 2026 in-progress manifest signature v1\x00"

MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 100_000
MAX_CHUNKS = 1 << 19
MAX_TOTAL_BYTES = 4 << 40
MAX_META = 64
MAX_META_KEY = 64
MAX_META_VALUE = 1024
MAX_VERSION = (1 << 63) - 1
RESERVED_META = "p2pckpt."
EXPIRES_KEY = "p2pckpt.expires"
IN_PROGRESS_KEY = "p2pckpt.in-progress"  # the sequence of an in-progress manifest
TYPES_KEY = "p2pckpt.types"  # which meta values are numbers or booleans (see encode_meta)
MetaValue = str | int | float | bool
_META_CODES = {bool: "b", int: "i", float: "f"}
_EXPIRES_RE = re.compile(r"[0-9]{1,12}")
_SEQUENCE_RE = re.compile(r"[1-9][0-9]{0,15}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KINDS = ("file", "dir")


def encode_meta(meta: Mapping[str, object]) -> dict[str, str]:
    """Typed meta (str, int, float, bool) as the manifest carries it: strings only.

    On the wire every meta value is a string, as older nodes require (they
    refuse a manifest with any other value). A number is written as Python
    prints it (``31``, ``0.31``), a bool as ``true``/``false``, and the reserved
    ``p2pckpt.types`` key records which keys were not strings, as compact
    JSON (``{"loss":"f","epoch":"i"}``); an older node shows it as one more
    string. ``decode_meta`` gives the types back. Ints within 64 bits, finite
    floats; anything else is a ``ConfigError``."""
    import json
    import math

    out: dict[str, str] = {}
    types: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise ConfigError(f"meta keys are strings, got {key!r}")
        if isinstance(value, str):
            out[key] = value
            continue
        code = _META_CODES.get(type(value))
        if code is None:
            raise ConfigError(
                f"meta {key!r}: a value is a string, int, float or bool, got {type(value).__name__}"
            )
        if code == "b":
            out[key] = "true" if value else "false"
        elif code == "i":
            assert isinstance(value, int)
            if not -(1 << 63) <= value < 1 << 63:
                raise ConfigError(f"meta {key!r}: integers are limited to 64 bits")
            out[key] = str(value)
        else:
            assert isinstance(value, float)
            if not math.isfinite(value):
                raise ConfigError(f"meta {key!r}: a float must be finite")
            out[key] = repr(value)
        types[key] = code
    if types:
        if TYPES_KEY in out:
            raise ConfigError(f"meta key {TYPES_KEY!r} is reserved")
        out[TYPES_KEY] = json.dumps(types, sort_keys=True, separators=(",", ":"))
        if len(out[TYPES_KEY]) > MAX_META_VALUE:
            raise ConfigError("too many numeric meta values (their types do not fit)")
    return out


def decode_meta(meta: Mapping[str, str]) -> dict[str, MetaValue]:
    """A manifest's meta with the types ``encode_meta`` recorded, without
    ``p2pckpt.types``. The meta is signed but comes from another node: a type
    record that is malformed, or a value that does not parse as its type,
    leaves that value a string (never an error)."""
    import json

    out: dict[str, MetaValue] = {k: v for k, v in meta.items() if k != TYPES_KEY}
    raw = meta.get(TYPES_KEY)
    if raw is None:
        return out
    try:
        types = json.loads(raw)
    except ValueError:
        return out
    if not isinstance(types, dict):
        return out
    for key, code in types.items():
        text = out.get(key)
        if not isinstance(text, str):
            continue
        if code == "b" and text in ("true", "false"):
            out[key] = text == "true"
        elif code == "i" and re.fullmatch(r"-?[0-9]{1,19}", text):
            number = int(text)
            if -(1 << 63) <= number < 1 << 63:
                out[key] = number
        elif code == "f" and re.fullmatch(r"-?[0-9][0-9.e+-]{0,30}", text):
            try:
                value = float(text)
            except ValueError:
                continue
            if value == value and value not in (float("inf"), float("-inf")):
                out[key] = value
    return out


def validate_name(name: object) -> str:
    """A checkpoint name: letters, digits, ``._-``, up to 128, not starting with punctuation."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ManifestError(
            f"bad checkpoint name {name!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )
    return name


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """One checkpoint version. ``root`` is filled in by ``encode``/``decode``."""

    name: str
    version: int
    publisher: PeerId
    created: int
    meta: Mapping[str, str]
    kind: str
    files: tuple[FileEntry, ...]
    root: bytes = field(default=b"", compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def chunk_count(self) -> int:
        return sum(len(f.chunks) for f in self.files)

    @property
    def expires(self) -> int | None:
        """The signed expiry (seconds since the epoch), if the publisher set one."""
        value = self.meta.get(EXPIRES_KEY)
        return int(value) if value is not None else None

    @property
    def in_progress(self) -> int | None:
        """The sequence number of an in-progress manifest (None: a finished version)."""
        value = self.meta.get(IN_PROGRESS_KEY)
        return int(value) if value is not None else None

    def iter_chunks(self) -> Iterator[tuple[int, FileEntry, Chunk]]:
        """Every chunk with its file, in the global order used on the wire."""
        index = 0
        for entry in self.files:
            for chunk in entry.chunks:
                yield index, entry, chunk
                index += 1


def _body(m: Manifest) -> list[Any]:
    return [
        _BODY_TAG,
        _FORMAT,
        m.name,
        m.version,
        m.publisher.key,
        m.created,
        [[k, m.meta[k]] for k in sorted(m.meta)],
        m.kind,
        [
            [f.path, f.size, [[c.offset, c.length, c.digest] for c in f.chunks]]
            for f in sorted(m.files, key=lambda f: f.path)
        ],
    ]


def _root(body: bytes) -> bytes:
    return blake3.blake3(body).digest()


def sign(manifest: Manifest, key: NodeKey) -> tuple[Manifest, bytes]:
    """Validate, encode and sign; returns the manifest with its root, and the
    envelope. A manifest marked in progress is signed under its own context
    (``sign_in_progress``), never as a finished version."""
    if manifest.publisher != key.peer_id:
        raise ManifestError("a manifest is signed by its own publisher")
    body = msgpack.packb(_body(manifest), use_bin_type=True)
    checked = decode_body(body)  # the same checks a puller will make
    context = IN_PROGRESS_CONTEXT if checked.in_progress is not None else SIGN_CONTEXT
    signature = key.sign(context + checked.root)
    envelope = msgpack.packb([_ENVELOPE_TAG, _FORMAT, body, signature], use_bin_type=True)
    if len(envelope) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest too large (too many files or chunks)")
    return checked, envelope


def verify(envelope: bytes) -> Manifest:
    """Decode a signed envelope of a finished version, checking structure,
    limits and signature (an in-progress manifest never verifies here).

    The caller still checks that the publisher is trusted for ``publish``.
    """
    manifest = _verify(envelope, in_progress=False)
    return manifest


def verify_in_progress(envelope: bytes) -> Manifest:
    """Decode a signed in-progress manifest (issue 21): a growing set of the
    finished files of a version its publisher is still writing. It carries
    ``p2pckpt.in-progress`` in its signed body *and* is signed under
    IN_PROGRESS_CONTEXT, so the mark can be neither stripped nor added, and
    no verifier of finished versions (``verify``, of any release) takes it.
    It is never installed, listed or noted as seen (rollback protection)."""
    return _verify(envelope, in_progress=True)


def verify_any(envelope: bytes) -> Manifest:
    """A finished or an in-progress manifest, whichever this is (for reusing
    a partial copy's chunks by hash, never for installing anything)."""
    try:
        return verify(envelope)
    except BadSignature:
        return verify_in_progress(envelope)


def _verify(envelope: bytes, in_progress: bool) -> Manifest:
    if not isinstance(envelope, bytes) or len(envelope) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest too large")
    try:
        outer = msgpack.unpackb(
            envelope, raw=False, strict_map_key=True, max_bin_len=MAX_MANIFEST_BYTES
        )
    except Exception as exc:  # msgpack raises many types on garbage
        raise ManifestError("manifest envelope is not valid msgpack") from exc
    if (
        not isinstance(outer, list)
        or len(outer) != 4
        or outer[0] != _ENVELOPE_TAG
        or outer[1] != _FORMAT
        or not isinstance(outer[2], bytes)
        or not isinstance(outer[3], bytes)
    ):
        raise ManifestError("not a signed p2pckpt manifest")
    manifest = decode_body(outer[2])
    context = IN_PROGRESS_CONTEXT if in_progress else SIGN_CONTEXT
    if (manifest.in_progress is not None) != in_progress:
        what = "an in-progress manifest" if manifest.in_progress is not None else "a finished one"
        raise BadSignature(f"manifest signature is invalid (this is {what})")
    try:
        verify_signature(manifest.publisher, context + manifest.root, outer[3])
    except Exception:
        raise BadSignature("manifest signature is invalid") from None
    return manifest


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ManifestError(f"malformed manifest: {what}")


def _int(v: object, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def decode_body(body: bytes) -> Manifest:
    """Decode and validate a manifest body (unsigned part)."""
    try:
        doc = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=64,
            max_str_len=4096,
            max_array_len=MAX_CHUNKS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise ManifestError("manifest body is not valid msgpack") from exc
    _need(isinstance(doc, list) and len(doc) == 9, "shape")
    tag, fmt, name, version, pub, created, meta, kind, files = doc
    _need(tag == _BODY_TAG and fmt == _FORMAT, "unknown format")
    validate_name(name)
    _need(_int(version, 0, MAX_VERSION), "version")
    _need(isinstance(pub, bytes) and len(pub) == 32, "publisher")
    _need(_int(created, 0, 1 << 40), "created")
    _need(isinstance(meta, list) and len(meta) <= MAX_META, "meta")
    meta_map: dict[str, str] = {}
    for item in meta:
        _need(isinstance(item, list) and len(item) == 2, "meta entry")
        k, v = item
        _need(isinstance(k, str) and 0 < len(k) <= MAX_META_KEY and k.isprintable(), "meta key")
        _need(isinstance(v, str) and len(v) <= MAX_META_VALUE, "meta value")
        _need(k not in meta_map, "duplicate meta key")
        meta_map[k] = v
    _need(list(meta_map) == sorted(meta_map), "meta order")
    expires = meta_map.get(EXPIRES_KEY)
    _need(expires is None or bool(_EXPIRES_RE.fullmatch(expires)), "expiry")
    sequence = meta_map.get(IN_PROGRESS_KEY)
    _need(sequence is None or bool(_SEQUENCE_RE.fullmatch(sequence)), "in-progress sequence")
    _need(kind in KINDS, "kind")
    _need(isinstance(files, list) and 0 < len(files) <= MAX_FILES, "file count")
    _need(kind == "dir" or len(files) == 1, "a file checkpoint has one file")
    entries = []
    total = 0
    nchunks = 0
    for f in files:
        _need(isinstance(f, list) and len(f) == 3, "file entry")
        path, size, chunks = f
        _need(isinstance(path, str), "path")
        _need(_int(size, 0, MAX_TOTAL_BYTES), "file size")
        _need(isinstance(chunks, list), "chunks")
        total += size
        nchunks += len(chunks)
        _need(total <= MAX_TOTAL_BYTES and nchunks <= MAX_CHUNKS, "too large")
        parsed = []
        expect = 0
        for c in chunks:
            _need(isinstance(c, list) and len(c) == 3, "chunk entry")
            off, length, digest = c
            _need(_int(off, 0, MAX_TOTAL_BYTES) and off == expect, "chunk offsets")
            _need(_int(length, 1, MAX_CHUNK), "chunk length")
            _need(isinstance(digest, bytes) and len(digest) == 32, "chunk hash")
            parsed.append(Chunk(off, length, digest))
            expect += length
        _need(expect == size, "chunks do not cover the file")
        entries.append(FileEntry(path, size, tuple(parsed)))
    paths = [e.path for e in entries]
    _need(paths == sorted(paths), "file order")
    validate_path_set(paths)
    manifest = Manifest(
        name=name,
        version=version,
        publisher=PeerId(pub),
        created=created,
        meta=meta_map,
        kind=kind,
        files=tuple(entries),
        root=_root(body),
    )
    _need(msgpack.packb(_body(manifest), use_bin_type=True) == body, "not canonical")
    return manifest
