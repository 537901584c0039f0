"""Tests for p2pckpt.discovery.txt: TXT round trip, every rejection, never raising."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.discovery.txt import (
    MAX_ADDRS,
    MAX_EPOCH,
    MAX_MERGED_ADDRS,
    MAX_PROPERTIES,
    MAX_VALUE,
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Announcement,
    encode_properties,
    instance_name,
    merge,
    parse_announcement,
)
from p2pckpt.errors import LocalProtocolError
from p2pckpt.identity.peer_id import PeerId
from tests.strategies import peer_ids

PROPERTY = settings(max_examples=200, database=None, deadline=None)
PEER = PeerId(bytes(range(32)))
OTHER = PeerId(bytes(range(100, 132)))
ADDRS = ["10.0.0.1"]


def good(**changes: bytes | None) -> dict[bytes, bytes | None]:
    """Valid properties for PEER at epoch 5, with some values replaced (None: removed)."""
    props: dict[bytes, bytes | None] = dict(encode_properties(PEER, 5))
    for key, value in changes.items():
        if value is None:
            props.pop(key.encode(), None)
        else:
            props[key.encode()] = value
    return props


def flip_checksum(peer: PeerId) -> bytes:
    text = str(peer)
    last = "A" if text[-1] != "A" else "B"
    return (text[:-1] + last).encode()


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
    lambda ip: not (ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255")
)


@PROPERTY
@given(
    peer=peer_ids,
    epoch=st.integers(0, MAX_EPOCH),
    ips=st.lists(addresses, min_size=1, max_size=MAX_ADDRS),
    port=st.integers(1, 65535),
)
def test_round_trip(peer: PeerId, epoch: int, ips: list[Any], port: int) -> None:
    """What a node encodes is what a browser parses back (addresses deduplicated)."""
    found = parse_announcement(dict(encode_properties(peer, epoch)), [str(i) for i in ips], port)
    expected = tuple(dict.fromkeys((str(i), port) for i in ips))
    assert found == Announcement(peer, expected, epoch, PROTOCOL_VERSION)


def test_encoded_form() -> None:
    """Three short ASCII values; the ID is the printed, checksummed form."""
    props = encode_properties(PEER, 0)
    assert props == {b"id": str(PEER).encode(), b"v": b"1", b"e": b"0"}
    assert max(len(v) for v in encode_properties(PEER, MAX_EPOCH).values()) <= MAX_VALUE


@pytest.mark.parametrize("epoch", [-1, MAX_EPOCH + 1, True, 1.0, "1", None])
def test_encode_refuses_bad_epoch(epoch: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_properties(PEER, epoch)


@pytest.mark.parametrize("proto", [0, -1, 65536, True])
def test_encode_refuses_bad_proto(proto: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_properties(PEER, 1, proto)


@PROPERTY
@given(peer=peer_ids)
def test_instance_name(peer: PeerId) -> None:
    """A valid DNS-SD instance label (<= 63 bytes), stable, and distinct per peer prefix."""
    name = instance_name(peer)
    label = name.removesuffix("." + SERVICE_TYPE)
    assert name.endswith("._p2pckpt._tcp.local.")
    assert label.startswith("p2pckpt-") and len(label.encode()) <= 63
    assert label.replace("-", "").isalnum() and label.isascii()
    assert instance_name(peer) == name
    assert str(peer).replace("-", "").startswith(label.removeprefix("p2pckpt-"))


def test_accepts_extras_and_canonicalises() -> None:
    """Unknown keys are ignored (forward compatible); addresses come out canonical."""
    found = parse_announcement(
        good(x=b"anything", flag=None) | {b"y": None},
        ["10.0.0.1", "FE80::1%2", "10.0.0.1", "127.0.0.1"],
        80,
    )
    assert found is not None
    assert found.addrs == (("10.0.0.1", 80), ("fe80::1%2", 80), ("127.0.0.1", 80))
    lenient = parse_announcement(good(id=str(PEER).lower().replace("-", "").encode()), ADDRS, 80)
    assert lenient is not None and lenient.peer == PEER
    future = parse_announcement(good(v=b"2"), ADDRS, 80)
    assert future is not None and future.proto == 2  # the caller decides what it speaks


BAD_PROPERTIES: list[tuple[str, Any]] = [
    ("no id", good(id=None)),
    ("no v", good(v=None)),
    ("no e", good(e=None)),
    ("id without value", {**good(), b"id": None}),
    ("v without value", {**good(), b"v": None}),
    ("e without value", {**good(), b"e": None}),
    ("id checksum", good(id=flip_checksum(PEER))),
    ("id empty", good(id=b"")),
    ("id not ascii", good(id=str(PEER).encode()[:-1] + b"\xc3\x89")),
    ("id not base32", good(id=b"0" * 56)),
    ("id too short", good(id=str(PEER).encode()[:-6])),
    ("id too long", good(id=str(PEER).encode() + b"-" * 62)),
    ("v zero", good(v=b"0")),
    ("v leading zero", good(v=b"01")),
    ("v plus", good(v=b"+1")),
    ("v space", good(v=b" 1")),
    ("v trailing space", good(v=b"1 ")),
    ("v underscore", good(v=b"1_0")),
    ("v empty", good(v=b"")),
    ("v word", good(v=b"one")),
    ("v too big", good(v=b"65536")),
    ("v unicode digit", good(v="\u0661".encode())),
    ("e negative", good(e=b"-1")),
    ("e leading zero", good(e=b"007")),
    ("e double zero", good(e=b"00")),
    ("e over 2**63-1", good(e=str(MAX_EPOCH + 1).encode())),
    ("e twenty digits", good(e=b"1" * 20)),
    ("e exponent", good(e=b"1e3")),
    ("e hex", good(e=b"0x10")),
    ("e unicode digit", good(e="\u0663".encode())),
    ("e newline", good(e=b"3\n")),
    ("value too long", good(note=b"x" * (MAX_VALUE + 1))),
    ("key too long", {**good(), b"k" * (MAX_VALUE + 1): b"1"}),
    ("too many keys", {**good(), **{b"k%d" % i: b"" for i in range(MAX_PROPERTIES)}}),
    ("str key", {**good(), "id": b"x"}),
    ("str value", {**good(), b"e": "5"}),
    ("int value", {**good(), b"e": 5}),
    ("not a dict", list(good().items())),
]


@pytest.mark.parametrize(("why", "props"), BAD_PROPERTIES, ids=[b[0] for b in BAD_PROPERTIES])
def test_rejects_bad_properties(why: str, props: Any) -> None:
    assert parse_announcement(props, ADDRS, 80) is None


BAD_ADDRESSES: list[tuple[str, Any]] = [
    ("none", []),
    ("too many", [f"10.0.0.{i}" for i in range(1, MAX_ADDRS + 2)]),
    ("host name", ["example.com"]),
    ("with prefix", ["10.0.0.1/24"]),
    ("with port", ["10.0.0.1:80"]),
    ("leading zero", ["010.0.0.1"]),
    ("space", [" 10.0.0.1"]),
    ("empty", [""]),
    ("multicast v4", ["224.0.0.251"]),
    ("multicast v6", ["ff02::fb"]),
    ("unspecified v4", ["0.0.0.0"]),  # noqa: S104 - test data, nothing binds
    ("unspecified v6", ["::"]),
    ("broadcast", ["255.255.255.255"]),
    ("one bad among good", ["10.0.0.1", "nope"]),
    ("bytes", [b"\x0a\x00\x00\x01"]),
    ("int", [167772161]),
    ("none value", [None]),
    ("huge", ["1" * 1000]),
    ("a str, not a list", "10.0.0.1"),
]


@pytest.mark.parametrize(("why", "addrs"), BAD_ADDRESSES, ids=[b[0] for b in BAD_ADDRESSES])
def test_rejects_bad_addresses(why: str, addrs: Any) -> None:
    assert parse_announcement(good(), addrs, 80) is None


@pytest.mark.parametrize("port", [0, -1, 65536, True, "80", 80.0, None])
def test_rejects_bad_port(port: Any) -> None:
    assert parse_announcement(good(), ADDRS, port) is None


def test_edges_accepted() -> None:
    """The limits themselves are fine: 16 addresses, port 1 and 65535, epoch 2**63-1."""
    many = [f"10.0.0.{i}" for i in range(1, MAX_ADDRS + 1)]
    for port in (1, 65535):
        found = parse_announcement(good(e=str(MAX_EPOCH).encode()), many, port)
        assert found is not None and found.epoch == MAX_EPOCH and len(found.addrs) == MAX_ADDRS
    assert parse_announcement(good(pad=b"x" * MAX_VALUE), ADDRS, 80) is not None


junk = st.one_of(
    st.none(), st.binary(max_size=150), st.text(max_size=80), st.integers(), st.floats()
)
keys = st.one_of(st.sampled_from([b"id", b"v", b"e"]), st.binary(max_size=150), st.text(max_size=4))
near_values = st.one_of(
    junk,
    st.sampled_from([str(PEER).encode(), flip_checksum(PEER), b"1", b"0", b"01", b"-1"]),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
)


@PROPERTY
@given(
    props=st.one_of(st.dictionaries(keys, near_values, max_size=40), junk, st.lists(junk)),
    addrs=st.one_of(
        st.lists(
            st.one_of(junk, addresses.map(str), st.sampled_from(["10.0.0.1", "::1", "fe80::1%2"])),
            max_size=20,
        ),
        junk,
    ),
    port=st.one_of(st.integers(-(2**20), 2**20), st.booleans(), st.text(max_size=5), junk),
)
def test_never_raises(props: Any, addrs: Any, port: Any) -> None:
    """Whatever a LAN host sends, parsing returns a value or None — it never raises."""
    found = parse_announcement(props, addrs, port)
    assert found is None or isinstance(found, Announcement)


def claim(peer: PeerId, epoch: int, *hosts: str) -> Announcement:
    return Announcement(peer, tuple((h, 80) for h in hosts), epoch, 1)


def test_merge() -> None:
    """The newest claim gives epoch and proto; addresses are united, newest first."""
    assert merge([]) is None
    newest, older = claim(PEER, 9, "10.0.0.9"), claim(PEER, 3, "10.0.0.3", "10.0.0.9")
    assert merge([newest, older]) == claim(PEER, 9, "10.0.0.9", "10.0.0.3")
    many = [claim(PEER, i, *(f"10.{i}.0.{j}" for j in range(1, 17))) for i in range(4)]
    merged = merge(many)
    assert merged is not None and len(merged.addrs) == MAX_MERGED_ADDRS
    assert merged.addrs[0] == ("10.0.0.1", 80)


def test_txt_module_is_pure() -> None:
    """txt.py loads neither trio nor zeroconf (it is the pure half of discovery)."""
    probe = (
        "import sys, p2pckpt.discovery.txt; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'zeroconf')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
