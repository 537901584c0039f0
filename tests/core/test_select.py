"""Which files a selective pull takes (issue 19): ``hf download`` semantics."""

from __future__ import annotations

import time

import pytest

from p2pckpt.errors import ConfigError
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import Chunk
from p2pckpt.manifest.manifest import FileEntry, Manifest
from p2pckpt.manifest.select import (
    check_patterns,
    covers,
    matches,
    normalise,
    pack,
    select,
    union,
    unpack,
)

PATHS = (
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer/vocab.json",
)


def _manifest(paths: tuple[str, ...] = PATHS) -> Manifest:
    files = tuple(FileEntry(p, 1, (Chunk(0, 1, bytes(32)),)) for p in paths)
    kind = "dir" if len(paths) > 1 else "file"
    pid = NodeKey.generate().peer_id
    return Manifest("m", 3, pid, int(time.time()), {}, kind, files)


def test_include_any_exclude_none() -> None:
    """A file is taken if it matches any include (or none is given) and no exclude."""
    assert matches("config.json", (), ())
    assert matches("config.json", ("*.json", "x"), ())
    assert not matches("config.json", ("*.safetensors",), ())
    assert not matches("config.json", (), ("config.*",))
    assert not matches("config.json", ("*.json",), ("config.json",))
    assert matches("tokenizer/vocab.json", ("tokenizer*",), ())  # '*' crosses '/'
    assert not matches("Config.json", ("config.json",), ())  # case counts


def test_select_returns_paths_or_none_for_everything() -> None:
    m = _manifest()
    assert select(m, (), ()) is None
    assert select(m, ("*",), ()) is None  # every file: the whole version
    assert select(m, ("config.json", "tokenizer*"), ()) == {
        "config.json",
        "tokenizer.json",
        "tokenizer/vocab.json",
    }
    assert select(m, ("model-*",), ("*-00002-of-*",)) == {"model-00001-of-00002.safetensors"}
    assert select(m, (), ("*.safetensors",)) == {
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer/vocab.json",
    }


def test_a_selection_matching_nothing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="matches no file of m@3"):
        select(_manifest(), ("*.bin",), ())
    with pytest.raises(ConfigError, match="--exclude"):
        select(_manifest(), (), ("*",))
    with pytest.raises(ConfigError):  # a one-file checkpoint: all or nothing
        select(_manifest(("w.pt",)), ("x*",), ())
    assert select(_manifest(("w.pt",)), ("*.pt",), ()) is None


@pytest.mark.parametrize("bad", ["", "a\nb", "x\x00", "\x7f"])
def test_unusable_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_patterns("--include", (bad,))
    check_patterns("--include", ("*.json", "a/b?[cd]"))


def test_union_covers_normalise_and_the_catalog_form() -> None:
    a, b = frozenset({"x"}), frozenset({"y"})
    assert union(a, b) == {"x", "y"} and union(a, None) is None and union(None, b) is None
    assert covers(None, a) and covers(a | b, a) and not covers(a, b) and not covers(a, None)
    m = _manifest()
    assert normalise(m, ["config.json", "nope"]) == {"config.json"}
    assert normalise(m, list(PATHS)) is None and normalise(m, None) is None
    for sel in (None, frozenset(), frozenset({"b/c.json", "a.json"})):
        assert unpack(pack(sel)) == sel
    assert pack(frozenset({"b", "a"})) == "a\nb"
