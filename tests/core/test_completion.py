"""When a watched checkpoint counts as complete (pure rules, no files, no clock)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from p2pckpt.config import WatchSpec
from p2pckpt.daemon.completion import (
    INDEX_FILE,
    INDEX_GRACE,
    Snapshot,
    header_length,
    index_shards,
    is_candidate_name,
    is_complete,
    safetensors_complete,
    settle_seconds,
    version_from_name,
)
from p2pckpt.manifest.manifest import MAX_VERSION

STABLE = WatchSpec(Path("/w"), "m", complete="stable", stable_seconds=5.0)
MARKER = WatchSpec(Path("/w"), "m", complete="marker", marker="DONE")
INDEX = WatchSpec(Path("/w"), "m", complete="index")


def safetensors(n: int = 4) -> bytes:
    """A whole safetensors file: one F32 tensor of ``n`` elements."""
    header = json.dumps({"t": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(4 * n)


def snap(files: dict[str, int], kind: str = "dir", **kw: Any) -> Snapshot:
    return Snapshot(kind, {p: (size, 1_000) for p, size in files.items()}, **kw)


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("step-001200", 1200),
        ("llama-ft-step1200.safetensors", 1200),
        ("checkpoint-500", 500),
        ("global_step42", 42),
        ("epoch3-step900.pt", 900),
        ("STEP_7", 7),
        ("step-0", 0),
        ("run2-steps_3000", 3000),
        ("model-v2.h5", 2),  # the extension's digit is not a version
        ("model.h5", None),
        ("llama-3-8b", 3),  # "8b" is a size
        ("llama-70b", None),
        ("run-123b", None),
        ("final", None),
        ("best.safetensors", None),
        ("", None),
        (f"step{MAX_VERSION}", MAX_VERSION),
        (f"step{MAX_VERSION + 1}", None),
        ("step" + "9" * 5000, None),  # no giant int conversion
        ("ckpt-" + "0" * 30 + "12", 12),
    ],
)
def test_version_from_name(name: str, version: int | None) -> None:
    assert version_from_name(name) == version


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("step-100", True),
        (".step-100", False),
        ("step-100.tmp", False),
        ("step-100.partial", False),
        ("model.safetensors.incomplete", False),
        (".out.p2pckpt-partial", False),
        ("out.P2PCKPT-PARTIAL", False),
        ("", False),
    ],
)
def test_hidden_and_temporary_names_are_not_candidates(name: str, ok: bool) -> None:
    assert is_candidate_name(name, STABLE) is ok


def test_markers_are_not_candidates_under_the_marker_rule() -> None:
    assert not is_candidate_name("DONE", MARKER)
    assert not is_candidate_name("x.safetensors.DONE", MARKER)
    assert is_candidate_name("x.safetensors.DONE", STABLE)  # only the marker rule knows markers


def test_settle_seconds() -> None:
    assert settle_seconds(STABLE) == 5.0
    assert settle_seconds(INDEX) == INDEX_GRACE
    assert settle_seconds(MARKER) == 0.0


# --- stable ---------------------------------------------------------------------------------


def test_stable_needs_two_equal_snapshots_and_quiet_time() -> None:
    a = snap({"w.bin": 10})
    assert not is_complete("stable", a, None, math.inf, STABLE)  # first sight
    assert not is_complete("stable", a, a, 4.9, STABLE)
    assert is_complete("stable", a, snap({"w.bin": 10}), 5.0, STABLE)


def test_a_growing_file_is_never_stable() -> None:
    """However long since the last event, a size change between snapshots is a change."""
    for size in range(1, 50):
        before, now = snap({"w.bin": size}, "file"), snap({"w.bin": size + 1}, "file")
        assert not is_complete("stable", now, before, math.inf, STABLE)


def test_stable_sees_mtime_and_file_set_changes() -> None:
    a = snap({"a": 1})
    touched = Snapshot("dir", {"a": (1, 2_000)})
    assert not is_complete("stable", touched, a, math.inf, STABLE)
    assert not is_complete("stable", snap({"a": 1, "b": 1}), a, math.inf, STABLE)


@pytest.mark.parametrize(
    "bad",
    [
        snap({}),  # empty
        snap({"a": 1, "b.tmp": 1}),  # a writer is mid-way
        snap({"a": 1, "sub/c.partial": 1}),
        snap({"a": 1}, problem="'l' is a link or special file"),
    ],
)
def test_no_rule_accepts_empty_temporary_or_linked_trees(bad: Snapshot) -> None:
    marked = Snapshot(bad.kind, {**bad.files, "DONE": (0, 1)}, problem=bad.problem)
    assert not is_complete("stable", bad, bad, math.inf, STABLE)
    if bad.files:
        assert not is_complete("marker", marked, marked, math.inf, MARKER)


def test_hidden_files_inside_a_tree_are_part_of_it() -> None:
    a = snap({".gitattributes": 1, "model.bin": 5})
    assert is_complete("stable", a, a, 5.0, STABLE)


# --- marker ---------------------------------------------------------------------------------


def test_marker_in_a_directory() -> None:
    without = snap({"model.bin": 5})
    assert not is_complete("marker", without, without, math.inf, MARKER)
    assert not is_complete("marker", snap({"sub/DONE": 0}), None, 0.0, MARKER)  # top level only
    assert is_complete("marker", snap({"model.bin": 5, "DONE": 0}), None, 0.0, MARKER)


def test_marker_beside_a_file() -> None:
    assert not is_complete("marker", snap({"m.pt": 5}, "file"), None, 0.0, MARKER)
    assert is_complete("marker", snap({"m.pt": 5}, "file", marker=True), None, 0.0, MARKER)


# --- index ----------------------------------------------------------------------------------


def test_safetensors_header_check() -> None:
    whole = safetensors(8)
    assert header_length(whole[:8]) == len(whole) - 8 - 32
    assert safetensors_complete(whole, len(whole))
    for cut in (len(whole) - 1, len(whole) - 31, 9, 8, 3, 0):  # truncated: still being written
        assert not safetensors_complete(whole[:cut], cut)
    assert not safetensors_complete(whole, len(whole) + 1)  # longer than declared


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b"{not json",
        b'{"t": {"data_offsets": [4, 0]}}',
        b'{"t": {"data_offsets": [0, "4"]}}',
        b'{"t": {"data_offsets": [0]}}',
        b'{"t": 5}',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_safetensors_headers_are_incomplete(header: bytes) -> None:
    data = len(header).to_bytes(8, "little") + header + bytes(4)
    assert not safetensors_complete(data, len(data))


def test_absurd_header_lengths_are_refused_before_reading() -> None:
    assert header_length((2**40).to_bytes(8, "little")) is None
    assert header_length(b"\x01" + bytes(7)) is None
    assert header_length(b"short") is None


def test_metadata_and_empty_tensor_sets() -> None:
    header = b'{"__metadata__": {"format": "pt"}}'
    data = len(header).to_bytes(8, "little") + header
    assert safetensors_complete(data, len(data))


def _index(*shards: str) -> bytes:
    return json.dumps({"metadata": {}, "weight_map": {f"w{i}": s for i, s in enumerate(shards)}})


def _sharded(done: set[str], index: bytes | None, extra: dict[str, int] | None = None) -> Snapshot:
    files = {"model-00001-of-00002.safetensors": 100, "model-00002-of-00002.safetensors": 100}
    files |= {INDEX_FILE: 50} if index is not None else {}
    files |= extra or {}
    return snap(files, index=index, complete_shards=frozenset(done))


def test_index_complete_only_when_every_shard_is_whole_and_quiet() -> None:
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    idx = _index(*sorted(shards)).encode()
    whole = _sharded(shards, idx)
    assert is_complete("index", whole, whole, INDEX_GRACE, INDEX)
    assert not is_complete("index", whole, whole, INDEX_GRACE - 0.1, INDEX)  # grace
    assert not is_complete("index", whole, None, math.inf, INDEX)
    truncated = _sharded({"model-00001-of-00002.safetensors"}, idx)
    assert not is_complete("index", truncated, truncated, math.inf, INDEX)
    no_index = _sharded(shards, None)  # shards are there, the index is still to come
    assert not is_complete("index", no_index, no_index, math.inf, INDEX)
    half_index = _sharded(shards, idx[: len(idx) // 2])
    assert not is_complete("index", half_index, half_index, math.inf, INDEX)


def test_index_naming_a_missing_shard_is_incomplete() -> None:
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    idx = _index(*sorted(shards), "model-00003-of-00003.safetensors").encode()
    missing = _sharded(shards, idx)
    assert not is_complete("index", missing, missing, math.inf, INDEX)
    assert index_shards(idx) == shards | {"model-00003-of-00003.safetensors"}
    assert index_shards(b'{"weight_map": {}}') is None
    assert index_shards(b'{"weight_map": {"w": 3}}') is None


def test_index_rule_for_single_files_and_unsharded_directories() -> None:
    name = "llama-step5.safetensors"
    whole = snap({name: 100}, "file", complete_shards=frozenset([name]))
    assert is_complete("index", whole, whole, INDEX_GRACE, INDEX)
    torn = snap({name: 100}, "file")
    assert not is_complete("index", torn, torn, math.inf, INDEX)
    pt = snap({"x.pt": 100}, "file")
    assert not is_complete("index", pt, pt, math.inf, INDEX)  # nothing to check: never
    single = snap(
        {"model.safetensors": 9, "config.json": 1}, complete_shards=frozenset(["model.safetensors"])
    )
    assert is_complete("index", single, single, INDEX_GRACE, INDEX)
    no_tensors = snap({"config.json": 1})
    assert not is_complete("index", no_tensors, no_tensors, math.inf, INDEX)


def test_unknown_rule_is_a_bug() -> None:
    a = snap({"a": 1})
    with pytest.raises(ValueError, match="unknown completion rule"):
        is_complete("eventually", a, a, math.inf, STABLE)
