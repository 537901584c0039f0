"""Tests for p2pckpt.manifest.manifest: signing, canonical form, limits and hostile bodies."""

from __future__ import annotations

import dataclasses
from typing import Any

import blake3
import msgpack
import pytest
from hypothesis import given, settings

from p2pckpt.errors import BadSignature, ConfigError, ManifestError, UnsafePath
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import MAX_CHUNK, Chunk
from p2pckpt.manifest.manifest import (
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    MAX_TOTAL_BYTES,
    SIGN_CONTEXT,
    TYPES_KEY,
    FileEntry,
    Manifest,
    decode_body,
    decode_meta,
    encode_meta,
    sign,
    verify,
)
from tests import strategies as s

KEY = NodeKey.generate()
OTHER_KEY = NodeKey.generate()
DIGEST = bytes(range(32))


def entry(path: str, *lengths: int) -> FileEntry:
    chunks = []
    offset = 0
    for length in lengths:
        chunks.append(Chunk(offset, length, DIGEST))
        offset += length
    return FileEntry(path, offset, tuple(chunks))


def make_manifest(**changes: Any) -> Manifest:
    base = Manifest(
        name="llama-7b",
        version=3,
        publisher=KEY.peer_id,
        created=1_700_000_000,
        meta={"framework": "pytorch", "step": "1000"},
        kind="dir",
        files=(entry("config.json", 10), entry("d1/f_3.bin", MAX_CHUNK, 5)),
    )
    return dataclasses.replace(base, **changes)


def raw_body(**changes: Any) -> list[Any]:
    """The body array of ``make_manifest()`` by hand, with fields replaced by ``changes``."""
    fields: dict[str, Any] = {
        "tag": "p2pckpt-manifest",
        "format": 1,
        "name": "llama-7b",
        "version": 3,
        "publisher": KEY.peer_id.key,
        "created": 1_700_000_000,
        "meta": [["framework", "pytorch"], ["step", "1000"]],
        "kind": "dir",
        "files": [
            ["config.json", 10, [[0, 10, DIGEST]]],
            ["d1/f_3.bin", MAX_CHUNK + 5, [[0, MAX_CHUNK, DIGEST], [MAX_CHUNK, 5, DIGEST]]],
        ],
    }
    fields.update(changes)
    return list(fields.values())


def signed_envelope(body: bytes, key: NodeKey = KEY) -> bytes:
    """Sign raw body bytes the way ``sign`` does and wrap them in the envelope layout."""
    root = blake3.blake3(body).digest()
    signature = key.sign(SIGN_CONTEXT + root)
    return msgpack.packb(["p2pckpt-signed-manifest", 1, body, signature], use_bin_type=True)


def envelope_of(body: list[Any], key: NodeKey = KEY) -> bytes:
    return signed_envelope(msgpack.packb(body, use_bin_type=True), key)


# --- round trip and stability ----------------------------------------------------


@settings(max_examples=25, database=None, deadline=None)
@given(manifest=s.manifests(publisher=KEY.peer_id))
def test_sign_verify_round_trip(manifest: Manifest) -> None:
    """Any valid manifest signed by its publisher verifies back to an equal manifest."""
    signed, envelope = sign(manifest, KEY)
    got = verify(envelope)
    assert got == manifest == signed
    assert got.root == signed.root
    assert len(got.root) == 32


def test_hand_built_body_matches_sign() -> None:
    """The hand-built body layout used below is exactly what ``sign`` produces."""
    signed, envelope = sign(make_manifest(), KEY)
    assert envelope == envelope_of(raw_body())
    assert verify(envelope) == signed


def test_root_is_stable() -> None:
    """The same manifest always gives the same root and the same envelope bytes."""
    a, env_a = sign(make_manifest(), KEY)
    b, env_b = sign(make_manifest(meta={"step": "1000", "framework": "pytorch"}), KEY)
    assert env_a == env_b
    assert a.root == b.root == verify(env_a).root
    body = msgpack.unpackb(env_a)[2]
    assert a.root == blake3.blake3(body).digest()


def test_root_changes_with_content() -> None:
    """Changing any field changes the root."""
    root = sign(make_manifest(), KEY)[0].root
    for change in (
        {"version": 4},
        {"created": 1},
        {"meta": {}},
        {"files": (entry("config.json", 11),)},
    ):
        assert sign(make_manifest(**change), KEY)[0].root != root


def test_iteration_helpers() -> None:
    """total_bytes, chunk_count and iter_chunks follow the files in order."""
    m = sign(make_manifest(), KEY)[0]
    assert m.total_bytes == 10 + MAX_CHUNK + 5
    assert m.chunk_count == 3
    assert [(i, f.path, c.offset) for i, f, c in m.iter_chunks()] == [
        (0, "config.json", 0),
        (1, "d1/f_3.bin", 0),
        (2, "d1/f_3.bin", MAX_CHUNK),
    ]


def test_sign_by_another_key_refused() -> None:
    """A manifest can only be signed by its own publisher."""
    with pytest.raises(ManifestError):
        sign(make_manifest(), OTHER_KEY)


# --- tampering ---------------------------------------------------------------------


def test_any_flipped_byte_is_rejected() -> None:
    """Changing any single byte of an envelope makes verify raise a ManifestError."""
    _, envelope = sign(make_manifest(files=(entry("a.bin", 3),)), KEY)
    for i in range(len(envelope)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(envelope)
            tampered[i] ^= mask
            with pytest.raises(ManifestError):
                verify(bytes(tampered))


def test_truncated_or_extended_envelope_rejected() -> None:
    """A cut or padded envelope is rejected."""
    _, envelope = sign(make_manifest(), KEY)
    for n in range(len(envelope)):
        with pytest.raises(ManifestError):
            verify(envelope[:n])
    with pytest.raises(ManifestError):
        verify(envelope + b"\x00")


def test_signature_by_another_key_rejected() -> None:
    """A body signed by someone other than its publisher fails with BadSignature."""
    with pytest.raises(BadSignature):
        verify(envelope_of(raw_body(), OTHER_KEY))


def test_swapped_signature_rejected() -> None:
    """A valid signature for another root does not verify this body."""
    other = msgpack.unpackb(sign(make_manifest(version=4), KEY)[1])
    mine = msgpack.unpackb(sign(make_manifest(), KEY)[1])
    mine[3] = other[3]
    with pytest.raises(BadSignature):
        verify(msgpack.packb(mine, use_bin_type=True))


@pytest.mark.parametrize(
    "outer",
    [
        ["p2pckpt-signed-manifest", 2, b"", b""],
        ["p2pckpt-manifest", 1, b"", b""],
        ["p2pckpt-signed-manifest", 1, b""],
        ["p2pckpt-signed-manifest", 1, "body", b""],
        {"tag": "p2pckpt-signed-manifest"},
        "p2pckpt-signed-manifest",
    ],
)
def test_bad_envelope_shape_rejected(outer: Any) -> None:
    """An envelope with the wrong tag, format, arity or types is not a manifest."""
    with pytest.raises(ManifestError):
        verify(msgpack.packb(outer, use_bin_type=True))


def test_oversized_or_non_bytes_envelope_rejected() -> None:
    """Envelopes over MAX_MANIFEST_BYTES, or not bytes, are refused before parsing."""
    with pytest.raises(ManifestError, match="too large"):
        verify(bytes(MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError):
        verify(bytearray(sign(make_manifest(), KEY)[1]))  # type: ignore[arg-type]


# --- canonical form ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"meta": [["step", "1000"], ["framework", "pytorch"]]}, "meta order"),
        ({"meta": [["step", "1"], ["step", "2"]]}, "duplicate meta key"),
        (
            {
                "files": [
                    ["d1/f_3.bin", 5, [[0, 5, DIGEST]]],
                    ["config.json", 10, [[0, 10, DIGEST]]],
                ]
            },
            "file order",
        ),
    ],
    ids=["meta-order", "meta-duplicate", "file-order"],
)
def test_non_canonical_body_rejected(changes: dict[str, Any], what: str) -> None:
    """A correctly signed body that is not in canonical order is rejected."""
    with pytest.raises(ManifestError, match=what):
        verify(envelope_of(raw_body(**changes)))


def test_non_minimal_integer_encoding_rejected() -> None:
    """A signed body with an integer in a longer msgpack form than needed is rejected."""
    items = [msgpack.packb(x, use_bin_type=True) for x in raw_body()]
    assert items[3] == b"\x03"  # version 3, as a positive fixint
    items[3] = b"\xcf" + (3).to_bytes(8, "big")  # the same value as uint64
    body = b"\x99" + b"".join(items)
    assert msgpack.unpackb(body)[3] == 3
    with pytest.raises(ManifestError, match="not canonical"):
        verify(signed_envelope(body))


def test_trailing_bytes_after_body_rejected() -> None:
    """A signed body followed by extra bytes is rejected."""
    body = msgpack.packb(raw_body(), use_bin_type=True) + b"\xc0"
    with pytest.raises(ManifestError):
        verify(signed_envelope(body))


# --- limits and field validation -----------------------------------------------

# id -> (body fields to replace, the reason the rejection must name)
BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "chunk-length-zero": ({"files": [["a.bin", 0, [[0, 0, DIGEST]]]]}, "chunk length"),
    "chunk-too-long": (
        {"files": [["a.bin", MAX_CHUNK + 1, [[0, MAX_CHUNK + 1, DIGEST]]]]},
        "chunk length",
    ),
    "chunk-gap": ({"files": [["a.bin", 10, [[0, 4, DIGEST], [5, 5, DIGEST]]]]}, "chunk offsets"),
    "chunk-overlap": (
        {"files": [["a.bin", 10, [[0, 6, DIGEST], [5, 4, DIGEST]]]]},
        "chunk offsets",
    ),
    "chunk-not-from-zero": ({"files": [["a.bin", 5, [[1, 5, DIGEST]]]]}, "chunk offsets"),
    "chunks-short-of-size": ({"files": [["a.bin", 11, [[0, 10, DIGEST]]]]}, "do not cover"),
    "chunks-beyond-size": ({"files": [["a.bin", 9, [[0, 10, DIGEST]]]]}, "do not cover"),
    "no-chunks-for-data": ({"files": [["a.bin", 1, []]]}, "do not cover"),
    "digest-31": ({"files": [["a.bin", 1, [[0, 1, DIGEST[:31]]]]]}, "chunk hash"),
    "digest-str": ({"files": [["a.bin", 1, [[0, 1, "x" * 32]]]]}, "chunk hash"),
    "chunk-entry-extra": ({"files": [["a.bin", 1, [[0, 1, DIGEST, 0]]]]}, "chunk entry"),
    "file-entry-short": ({"files": [["a.bin", 0]]}, "file entry"),
    "file-size-negative": ({"files": [["a.bin", -1, []]]}, "file size"),
    "file-size-bool": ({"files": [["a.bin", True, [[0, 1, DIGEST]]]]}, "file size"),
    "file-size-over-total": ({"files": [["a.bin", MAX_TOTAL_BYTES + 1, []]]}, "file size"),
    "no-files": ({"files": []}, "file count"),
    "file-kind-two-files": (
        {"kind": "file", "files": [["a.bin", 0, []], ["b.bin", 0, []]]},
        "one file",
    ),
    "unknown-kind": ({"kind": "tar"}, "kind"),
    "bad-name-slash": ({"name": "llama/7b"}, "bad checkpoint name"),
    "bad-name-leading-dot": ({"name": ".llama"}, "bad checkpoint name"),
    "bad-name-empty": ({"name": ""}, "bad checkpoint name"),
    "bad-name-too-long": ({"name": "x" * 129}, "bad checkpoint name"),
    "bad-name-bytes": ({"name": b"llama"}, "bad checkpoint name"),
    "version-negative": ({"version": -1}, "version"),
    "version-bool": ({"version": True}, "version"),
    "created-too-big": ({"created": (1 << 40) + 1}, "created"),
    "publisher-31": ({"publisher": KEY.peer_id.key[:31]}, "publisher"),
    "meta-empty-key": ({"meta": [["", "v"]]}, "meta key"),
    "meta-control-key": ({"meta": [["a\nb", "v"]]}, "meta key"),
    "meta-long-value": ({"meta": [["k", "v" * 1025]]}, "meta value"),
    "meta-not-pairs": ({"meta": [["k"]]}, "meta entry"),
    "meta-too-many": ({"meta": [[f"k{i:03}", ""] for i in range(65)]}, "meta"),
    "format-2": ({"format": 2}, "unknown format"),
    "expiry-not-a-number": ({"meta": [["p2pckpt.expires", "soon"]]}, "expiry"),
    "expiry-negative": ({"meta": [["p2pckpt.expires", "-5"]]}, "expiry"),
    "expiry-huge": ({"meta": [["p2pckpt.expires", "9" * 13]]}, "expiry"),
    "wrong-tag": ({"tag": "p2pckpt-manifest-v2"}, "unknown format"),
}


@pytest.mark.parametrize(("changes", "reason"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_invalid_signed_body_rejected(changes: dict[str, Any], reason: str) -> None:
    """A properly signed body that breaks a field rule or limit is rejected for that rule."""
    with pytest.raises(ManifestError, match=reason) as info:
        verify(envelope_of(raw_body(**changes)))
    assert not isinstance(info.value, BadSignature)


def test_body_with_extra_field_rejected() -> None:
    """A body array with a tenth element is rejected."""
    with pytest.raises(ManifestError, match="shape"):
        verify(envelope_of([*raw_body(), None]))


def test_too_many_files_rejected() -> None:
    """A body listing more than MAX_FILES files is rejected."""
    files = [[f"f{i:06}", 0, []] for i in range(MAX_FILES + 1)]
    with pytest.raises(ManifestError, match="file count"):
        decode_body(msgpack.packb(raw_body(files=files), use_bin_type=True))


@pytest.mark.parametrize(
    "manifest",
    [
        make_manifest(name="bad name"),
        make_manifest(kind="file"),
        make_manifest(files=(FileEntry("a.bin", 10, (Chunk(0, 9, DIGEST),)),)),
        make_manifest(files=(FileEntry("a.bin", 0, (Chunk(0, 0, DIGEST),)),)),
        make_manifest(files=()),
    ],
    ids=["name", "file-kind-two-files", "not-covered", "empty-chunk", "no-files"],
)
def test_sign_refuses_invalid_manifest(manifest: Manifest) -> None:
    """The publisher side runs the same checks as a puller and refuses to sign bad input."""
    with pytest.raises(ManifestError):
        sign(manifest, KEY)


# --- hostile paths -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../x", "/abs", "a/../../x", "a//b", "./a", "a/", "C:\\x", "a\x00b", "", "NUL"],
)
def test_hostile_path_in_signed_body_rejected(path: str) -> None:
    """A validly signed manifest naming an unsafe path is refused as a whole."""
    files = [[path, 1, [[0, 1, DIGEST]]]]
    with pytest.raises(UnsafePath):
        verify(envelope_of(raw_body(files=files)))


@pytest.mark.parametrize(
    "paths",
    [["a", "a/b"], ["A.bin", "a.bin"], ["d/x", "d/x"]],
    ids=["file-is-dir", "case-collision", "duplicate"],
)
def test_conflicting_paths_in_signed_body_rejected(paths: list[str]) -> None:
    """Paths that would collide on disk are refused even when signed."""
    files = [[p, 0, []] for p in paths]
    with pytest.raises(UnsafePath):
        verify(envelope_of(raw_body(files=files)))


def test_non_string_path_rejected() -> None:
    """A path that is not a string is a malformed manifest."""
    with pytest.raises(ManifestError):
        verify(envelope_of(raw_body(files=[[b"a.bin", 0, []]])))


def test_signed_expiry_is_read_back() -> None:
    """``p2pckpt.expires`` in the signed meta is the manifest's expiry; absent, none."""
    dated, envelope = sign(make_manifest(meta={"p2pckpt.expires": "1800000000"}), KEY)
    assert verify(envelope).expires == dated.expires == 1_800_000_000
    assert make_manifest().expires is None


TYPED = {"loss": 0.31, "epoch": 3, "final": True, "base_model": "llama", "neg": -2.5e-07}


def test_typed_meta_is_strings_on_the_wire_and_typed_again() -> None:
    """Numbers and bools are signed as strings (what older nodes require of
    every meta value), with a types record; decoding gives the values back."""
    wire = encode_meta(TYPED)
    assert all(isinstance(v, str) for v in wire.values())
    assert wire["loss"] == "0.31" and wire["epoch"] == "3" and wire["final"] == "true"
    assert wire[TYPES_KEY] == '{"epoch":"i","final":"b","loss":"f","neg":"f"}'
    decoded = decode_meta(wire)
    assert decoded == TYPED
    assert type(decoded["epoch"]) is int and type(decoded["final"]) is bool
    assert encode_meta({"a": "x"}) == {"a": "x"}  # strings only: no types record


def test_typed_meta_survives_sign_and_a_strings_only_reader() -> None:
    """The signed manifest decodes with the strings-only meta check older
    readers apply (the decoder itself is unchanged); its meta is all strings."""
    _, envelope = sign(make_manifest(meta=encode_meta(TYPED)), KEY)
    got = verify(envelope)
    assert all(isinstance(v, str) for v in got.meta.values())
    assert decode_meta(got.meta) == TYPED


@pytest.mark.parametrize(
    "bad",
    [{"x": None}, {"x": [1]}, {"x": float("nan")}, {"x": float("inf")}, {"x": 1 << 63}, {1: "a"}],
)
def test_typed_meta_refuses(bad: dict[Any, Any]) -> None:
    with pytest.raises(ConfigError):
        encode_meta(bad)


@pytest.mark.parametrize(
    "types",
    [
        "not json",
        "[1, 2]",
        '{"a": "i"}',  # a is "x": not an int, stays a string
        '{"a": "f", "b": "q"}',
        '{"missing": "i"}',
        '{"a": "f"}',
    ],
)
def test_typed_meta_from_a_bad_publisher_stays_strings(types: str) -> None:
    """A malformed types record never raises: the values stay strings."""
    meta = {"a": "x" if "i" in types else "nan", "b": "1", TYPES_KEY: types}
    decoded = decode_meta(meta)
    assert TYPES_KEY not in decoded
    assert decoded["a"] == meta["a"]
    assert all(isinstance(v, str) for v in decoded.values())
