"""Tests for p2pckpt.identity.peer_id: printing, parsing and typo detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.errors import ConfigError
from p2pckpt.identity.peer_id import PeerId
from tests.strategies import peer_ids

PROPERTY = settings(max_examples=100, database=None, deadline=None)
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
KEYS = [bytes(32), bytes(range(32)), bytes(range(100, 132))]


@PROPERTY
@given(peer=peer_ids)
def test_str_parse_round_trip(peer: PeerId) -> None:
    """Printing a peer ID and parsing it back gives the same ID."""
    assert PeerId.parse(str(peer)) == peer


@PROPERTY
@given(peer=peer_ids)
def test_printed_form(peer: PeerId) -> None:
    """The printed form is upper-case base32 in dash-separated groups of five."""
    text = str(peer)
    groups = text.split("-")
    assert all(len(g) == 5 for g in groups[:-1])
    assert 1 <= len(groups[-1]) <= 5
    assert set(text.replace("-", "")) <= set(B32)
    assert peer.short == groups[0]


@settings(max_examples=50, database=None, deadline=None)
@given(
    peer=peer_ids,
    seps=st.lists(st.sampled_from(["", "-", " ", "\n", "\t", "--"]), min_size=57, max_size=57),
    lower=st.lists(st.booleans(), min_size=56, max_size=56),
)
def test_dashes_case_and_whitespace_ignored(
    peer: PeerId, seps: list[str], lower: list[bool]
) -> None:
    """Dashes, spaces, newlines and letter case do not matter when parsing."""
    plain = str(peer).replace("-", "")
    assert len(plain) == 56
    cased = [ch.lower() if low else ch for ch, low in zip(plain, lower, strict=True)]
    text = "".join(sep + ch for sep, ch in zip(seps[:-1], cased, strict=True))
    assert PeerId.parse(text + seps[-1]) == peer


@pytest.mark.parametrize("key", KEYS, ids=["zeros", "counting", "offset"])
def test_every_single_character_typo_is_detected(key: bytes) -> None:
    """Replacing any one character with any other base32 character fails the checksum."""
    plain = str(PeerId(key)).replace("-", "")
    for pos, ch in enumerate(plain):
        for other in B32:
            if other == ch:
                continue
            typo = plain[:pos] + other + plain[pos + 1 :]
            with pytest.raises(ConfigError):
                PeerId.parse(typo)


@pytest.mark.parametrize("key", KEYS, ids=["zeros", "counting", "offset"])
def test_adjacent_swaps_are_detected(key: bytes) -> None:
    """Swapping two neighbouring different characters fails the checksum."""
    plain = str(PeerId(key)).replace("-", "")
    for pos in range(len(plain) - 1):
        if plain[pos] == plain[pos + 1]:
            continue
        swapped = plain[:pos] + plain[pos + 1] + plain[pos] + plain[pos + 2 :]
        with pytest.raises(ConfigError):
            PeerId.parse(swapped)


def test_wrong_length_rejected() -> None:
    """A character missing or added is not a peer ID."""
    plain = str(PeerId(bytes(range(32)))).replace("-", "")
    for text in (plain[:-1], plain[1:], plain + "A", "A" + plain, plain[:40], plain * 2):
        with pytest.raises(ConfigError):
            PeerId.parse(text)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "-----", "0" * 56, "1" * 56, "é" * 56, "A" * 81, "AAAAA=AA", "not a peer id"],
)
def test_garbage_rejected(text: str) -> None:
    """Empty, non-base32, non-ASCII or oversized input is a ConfigError."""
    with pytest.raises(ConfigError):
        PeerId.parse(text)


def test_config_error_is_value_error() -> None:
    """A bad peer ID is also a ValueError for callers that expect one."""
    with pytest.raises(ValueError, match="peer ID"):
        PeerId.parse("nope")


@pytest.mark.parametrize("key", [bytes(31), bytes(33), b"", "x" * 32])
def test_key_must_be_32_bytes(key: object) -> None:
    """A PeerId holds exactly 32 raw bytes."""
    with pytest.raises(ConfigError):
        PeerId(key)  # type: ignore[arg-type]


def test_equality_and_hash_follow_the_key() -> None:
    """Two PeerIds are equal, and hash equal, exactly when their keys are."""
    a, b, c = PeerId(bytes(32)), PeerId(bytes(32)), PeerId(bytes(31) + b"\x01")
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
