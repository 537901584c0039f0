"""Tests for p2pckpt.manifest.paths: manifest path grammar (R-36) and escaping (R-41)."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pckpt.errors import ManifestError, UnsafePath
from p2pckpt.manifest.paths import (
    MAX_COMPONENT_BYTES,
    MAX_DEPTH,
    MAX_PATH_BYTES,
    safe_display,
    validate_path_set,
    validate_relpath,
)

# Independent oracle of the characters no accepted path may contain.
C0_C1_DEL = frozenset(chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)])
WINDOWS_RESERVED_CHARS = frozenset('\\<>:"|?*')
BIDI_ZERO_WIDTH = frozenset(
    chr(c)
    for c in [
        0x061C,
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2060, 0x2065),
        *range(0x2066, 0x206A),
        0xFEFF,
    ]
)
REJECTED_CHARS = C0_C1_DEL | WINDOWS_RESERVED_CHARS | BIDI_ZERO_WIDTH

# Hypothesis settings: no example database, so test runs leave no files behind.
PROPERTY = settings(
    max_examples=500,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ACCEPTED = [
    "model.safetensors",
    "model-00001-of-00004.safetensors",
    "model.safetensors.index.json",
    "sub/dir/config.json",
    "modèle/权重.bin",
    "tokenizer/special_tokens_map.json",
    ".hidden",
    "a..b",
    "...x",
    " leading-space",
    "nullable.bin",
    "console.log",
    "COM10",
    "LPT10.txt",
    "comX",
    "auxiliary/nul_ish",
    "x" * MAX_COMPONENT_BYTES,
    "é" * (MAX_COMPONENT_BYTES // 2),
    "/".join(["d"] * MAX_DEPTH),
    "/".join(["x" * 200] * 20) + "/" + "y" * (MAX_PATH_BYTES - 20 * 201),
    "emoji-😀.bin",
]

REJECTED = [
    # not clean / not relative
    ("", "empty"),
    (".", "'.' component"),
    ("..", "'..' component"),
    ("../x", "'..' component"),
    ("a/../b", "'..' component"),
    ("a/..", "'..' component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("a//b", "empty component"),
    ("a/", "trailing"),
    ("a/b/", "trailing"),
    # backslash and Windows-reserved characters
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("C:x", "Windows-reserved"),
    ("C:/x", "Windows-reserved"),
    ("a<b", "Windows-reserved"),
    ("a>b", "Windows-reserved"),
    ('a"b', "Windows-reserved"),
    ("a|b", "Windows-reserved"),
    ("a?b", "Windows-reserved"),
    ("a*b", "Windows-reserved"),
    ("file:stream", "Windows-reserved"),
    # control characters
    ("a\x00b", "control"),
    ("a\x1b[31m", "control"),
    ("a\nb", "control"),
    ("a\tb", "control"),
    ("a\x7fb", "control"),
    ("a\x85b", "control"),
    ("a\x9bb", "control"),
    # bidi / zero-width
    ("x\u202e.exe", "bidi"),
    ("x\u202egpj.exe", "bidi"),
    ("a\u061cb", "bidi"),
    ("a\u200bb", "bidi"),
    ("a\u200db", "bidi"),
    ("a\u200fb", "bidi"),
    ("a\u202ab", "bidi"),
    ("a\u2060b", "bidi"),
    ("a\u2064b", "bidi"),
    ("a\u2066b", "bidi"),
    ("a\u2069b", "bidi"),
    ("\ufeffa", "bidi"),
    # trailing space or dot
    ("name.", "ends in space or dot"),
    ("name ", "ends in space or dot"),
    ("dir./x", "ends in space or dot"),
    ("dir /x", "ends in space or dot"),
    ("...", "ends in space or dot"),
    # reserved device names
    ("nul", "reserved device"),
    ("NUL", "reserved device"),
    ("NUL.txt", "reserved device"),
    ("nul.txt.jpg", "reserved device"),
    ("nul .txt", "reserved device"),
    ("con", "reserved device"),
    ("Prn.json", "reserved device"),
    ("aux.bin", "reserved device"),
    ("com0", "reserved device"),
    ("com1.tar.gz", "reserved device"),
    ("COM9", "reserved device"),
    ("lpt0", "reserved device"),
    ("LPT9.log", "reserved device"),
    ("lpt¹", "reserved device"),
    ("COM²", "reserved device"),
    ("com³.txt", "reserved device"),
    ("conin$", "reserved device"),
    ("CONOUT$.x", "reserved device"),
    ("sub/nul/x", "reserved device"),
    ("sub/dir/Aux", "reserved device"),
    # Unicode
    ("e\u0301", "NFC"),
    ("dir/cafe\u0301.bin", "NFC"),
    ("\u212b", "NFC"),  # ANGSTROM SIGN normalises to U+00C5
    ("a\ud800b", "UTF-8"),
    ("\udcff", "UTF-8"),
    # limits
    ("x" * (MAX_COMPONENT_BYTES + 1), "component longer"),
    ("é" * (MAX_COMPONENT_BYTES // 2 + 1), "component longer"),
    ("d/" + "权" * 86, "component longer"),
    ("/".join(["d"] * (MAX_DEPTH + 1)), "deeper"),
    ("/".join(["x" * 200] * 20) + "/" + "y" * (MAX_PATH_BYTES - 20 * 201 + 1), "longer than"),
    ("a/" + "é" * MAX_PATH_BYTES, "longer than"),
    ("a" * 1_000_000, "longer than"),
]


@pytest.mark.parametrize("path", ACCEPTED)
def test_accepted(path: str) -> None:
    assert validate_relpath(path) is path


@pytest.mark.parametrize(("path", "reason"), REJECTED)
def test_rejected(path: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=reason) as excinfo:
        validate_relpath(path)
    assert isinstance(excinfo.value, ManifestError)


@pytest.mark.parametrize(("path", "_reason"), REJECTED)
def test_rejected_message_is_escaped(path: str, _reason: str) -> None:
    with pytest.raises(UnsafePath) as excinfo:
        validate_relpath(path)
    message = str(excinfo.value)
    assert not set(message) & (C0_C1_DEL | BIDI_ZERO_WIDTH)
    assert message.encode("utf-8")  # no lone surrogates either
    assert len(message) < 1000  # huge names are truncated


def test_message_quotes_with_repr() -> None:
    with pytest.raises(UnsafePath) as excinfo:
        validate_relpath("a\x1b[31m")
    assert repr("a\x1b[31m") in str(excinfo.value)
    with pytest.raises(UnsafePath) as excinfo:
        validate_relpath("x\u202e.exe")
    assert "\\u202e" in str(excinfo.value)


@pytest.mark.parametrize("value", [None, b"model.bin", 1, ["a"]])
def test_non_string_rejected(value: object) -> None:
    with pytest.raises(UnsafePath, match="string"):
        validate_relpath(value)  # type: ignore[arg-type]


def test_constants() -> None:
    assert MAX_COMPONENT_BYTES == 255
    assert MAX_PATH_BYTES == 4096
    assert MAX_DEPTH == 64


# --- path sets ---------------------------------------------------------------


@pytest.mark.parametrize(
    "paths",
    [
        [],
        ["model.safetensors"],
        ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        ["a/b", "a/c", "a/d/e", "b"],
        ["ab", "a/b"],  # 'ab' is not a directory prefix of 'a/b'
        ["a.bin", "a/bin"],
        ["modèle/权重.bin", "modèle/config.json"],
    ],
)
def test_path_set_accepted(paths: list[str]) -> None:
    validate_path_set(paths)


@pytest.mark.parametrize(
    ("paths", "reason"),
    [
        (["a.bin", "a.bin"], "duplicate"),
        (["x", "sub/y", "sub/y"], "duplicate"),
        (["A.bin", "a.bin"], "differs only in case"),
        (["dir/Model.bin", "dir/model.BIN"], "differs only in case"),
        (["Straße.bin", "STRASSE.bin"], "differs only in case"),  # full case folding
        (["ǅ.bin", "ǆ.bin"], "differs only in case"),
        (["a", "a/b"], "is a file"),
        (["a/b", "a"], "is a directory"),
        (["a/b/c", "a/b"], "is a directory"),
        (["a/b", "a/b/c/d"], "is a file"),
        (["A", "a/b"], "is a file"),
        (["a/b", "A"], "is a directory"),
        (["Dir/x", "dir/y"], "directory 'dir' differs only in case"),
        (["p/Q/x", "p/q/y"], "differs only in case"),
        (["ok", "../escape"], "'..' component"),
        (["ok", "nul"], "reserved device"),
    ],
)
def test_path_set_rejected(paths: list[str], reason: str) -> None:
    with pytest.raises(UnsafePath, match=reason):
        validate_path_set(paths)


def test_path_set_max_files() -> None:
    names = [f"f{i}" for i in range(10)]
    validate_path_set(names, max_files=10)
    with pytest.raises(UnsafePath, match="more than 9 files"):
        validate_path_set(names, max_files=9)
    validate_path_set([], max_files=0)
    with pytest.raises(ValueError, match="max_files"):
        validate_path_set([], max_files=-1)


def test_path_set_stops_consuming_at_limit() -> None:
    consumed = 0

    def endless() -> Iterator[str]:
        nonlocal consumed
        while True:
            consumed += 1
            yield f"f{consumed}"

    with pytest.raises(UnsafePath, match="more than 100 files"):
        validate_path_set(endless(), max_files=100)
    assert consumed == 101


def test_path_set_default_limit() -> None:
    validate_path_set(f"f{i}" for i in range(100_000))
    with pytest.raises(UnsafePath, match="more than 100000 files"):
        validate_path_set(f"f{i}" for i in range(100_001))


# --- properties --------------------------------------------------------------

SAFE_COMPONENTS = [
    *"aBbcDefgh",
    "é",
    "权",
    "model.bin",
    "a..b",
    ".x",
    "~",
    "$HOME",
    "%2e%2e",
    "con1",
    "x y",
    "..x",
    "x.y",
]
TRICKY_COMPONENTS = [
    "",
    ".",
    "..",
    "...",
    "nul",
    "Nul.txt",
    "com1",
    "x.",
    "x ",
    "\\",
    "..\\..",
    "C:",
    "e\u0301",
    "\u202e",
    "\x00",
    "\x1b",
    "\x85",
]

safe_component = st.sampled_from(SAFE_COMPONENTS)
# Mostly plausible components, so that a good share of generated sets is accepted
# and the escape property is exercised, with hostile ones and arbitrary text mixed in.
component = st.one_of(
    *[safe_component] * 12,
    st.sampled_from(TRICKY_COMPONENTS),
    st.text(max_size=3),
)
tricky_paths = st.lists(component, min_size=1, max_size=4).map("/".join)

any_paths = st.one_of(
    tricky_paths,
    tricky_paths,
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real, absolute temporary destination directory."""
    return os.path.realpath(tmp_path_factory.mktemp("dest"))


plausible_paths = st.lists(st.sampled_from(SAFE_COMPONENTS), min_size=1, max_size=3).map("/".join)


def assert_stays_inside(root: str, path: str) -> None:
    """``path`` joined to ``root`` and normalised names something strictly below ``root``."""
    joined = os.path.normpath(os.path.join(root, path))
    assert joined != root
    assert os.path.commonpath([root, joined]) == root
    assert joined.startswith(root + os.sep)
    assert Path(joined).is_relative_to(root)
    assert os.path.relpath(joined, root) == os.path.normpath(path) == path


def assert_clean_characters(path: str) -> None:
    """``path`` holds none of the rejected characters and is NFC, encodable UTF-8."""
    assert not set(path) & REJECTED_CHARS
    assert unicodedata.is_normalized("NFC", path)
    assert path.encode("utf-8")


@PROPERTY
@given(paths=st.lists(any_paths, max_size=5))
def test_accepted_sets_never_escape_root(root: str, paths: list[str]) -> None:
    try:
        validate_path_set(paths)
    except UnsafePath:
        return
    for path in paths:
        assert_stays_inside(root, path)
        assert_clean_characters(path)


@PROPERTY
@given(path=any_paths)
def test_accepted_paths_never_escape_root(root: str, path: str) -> None:
    try:
        assert validate_relpath(path) is path
    except UnsafePath as exc:
        assert not set(str(exc)) & (C0_C1_DEL | BIDI_ZERO_WIDTH)
        return
    assert_stays_inside(root, path)
    assert_clean_characters(path)
    assert all(part not in ("", ".", "..") for part in path.split("/"))


@PROPERTY
@given(paths=st.lists(plausible_paths, max_size=6))
def test_accepted_sets_are_distinct_on_case_insensitive_filesystems(paths: list[str]) -> None:
    try:
        validate_path_set(paths)
    except UnsafePath:
        return
    folded = [unicodedata.normalize("NFC", p).casefold() for p in paths]
    assert len(set(folded)) == len(folded)
    dir_prefixes = {
        "/".join(f.split("/")[:depth]) for f in folded for depth in range(1, f.count("/") + 1)
    }
    assert not dir_prefixes & set(folded)


@PROPERTY
@given(s=st.text(alphabet=st.characters(exclude_categories=())))
def test_safe_display_has_no_control_characters(s: str) -> None:
    shown = safe_display(s)
    assert not set(shown) & C0_C1_DEL
    assert not set(shown) & BIDI_ZERO_WIDTH
    assert shown.isprintable()
    if s.isprintable():
        assert shown == s


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("model.safetensors", "model.safetensors"),
        ("modèle/权重.bin", "modèle/权重.bin"),
        ("a\x1b[31m", "'a\\x1b[31m'"),
        ("x\u202e.exe", "'x\\u202e.exe'"),
        ("a\nb", "'a\\nb'"),
        ("\ud800", "'\\ud800'"),
    ],
)
def test_safe_display_examples(name: str, shown: str) -> None:
    assert safe_display(name) == shown
