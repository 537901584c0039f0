"""Relay control frames: encoding, strict decoding, incremental reading, leftovers."""

from __future__ import annotations

import struct
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pckpt.errors import LocalProtocolError, RemoteProtocolError
from p2pckpt.relay import protocol as p

ALL = frozenset(
    {
        p.Register,
        p.Challenge,
        p.Proof,
        p.Registered,
        p.Refused,
        p.Incoming,
        p.Accept,
        p.Connect,
        p.Connected,
        p.Ping,
        p.Pong,
    }
)

keys = st.binary(min_size=32, max_size=32)
tokens = st.binary(min_size=p.MIN_TOKEN, max_size=p.MAX_TOKEN)
reasons = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=p.MAX_REASON
)
non_terminal = st.one_of(
    st.builds(p.Register, keys),
    st.builds(p.Challenge, keys),
    st.builds(p.Proof, st.binary(min_size=64, max_size=64)),
    st.just(p.Registered()),
    st.builds(p.Refused, reasons),
    st.builds(p.Incoming, tokens),
    st.just(p.Ping()),
    st.just(p.Pong()),
)
terminal = st.one_of(
    st.builds(p.Connect, keys), st.builds(p.Accept, tokens), st.just(p.Connected())
)
messages = st.one_of(non_terminal, terminal)


def _raw(*fields: object) -> bytes:
    body: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">H", len(body)) + body


def _feed_three_ways(data: bytes) -> list[tuple[list[p.Message], bytes]]:
    """Whole, byte at a time, and in two halves: (messages, leftover) each."""
    results = []
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))], [data[:7], data[7:]]):
        reader = p.FrameReader(ALL)
        got: list[p.Message] = []
        rest = b""
        for piece in pieces:
            if reader.finished:
                rest += piece
            else:
                got += reader.feed(piece)
        results.append((got, reader.take_leftover() + rest))
    return results


@given(messages)
def test_every_message_round_trips(msg: p.Message) -> None:
    """encode then decode gives back an equal message; frames stay within 1 KiB."""
    frame = p.encode(msg)
    assert len(frame) <= 2 + p.MAX_FRAME
    (length,) = struct.unpack(">H", frame[:2])
    assert length == len(frame) - 2
    assert p.decode(frame[2:]) == msg


@given(st.lists(non_terminal, max_size=5), terminal, st.binary(max_size=300))
def test_reader_stops_at_terminal_and_returns_leftover(
    before: list[p.Message], last: p.Message, trailing: bytes
) -> None:
    """Whole, byte-at-a-time or split: the same messages, and every byte after the
    terminal frame comes back as leftover (none is parsed or lost)."""
    data = b"".join(p.encode(m) for m in before) + p.encode(last) + trailing
    for got, leftover in _feed_three_ways(data):
        assert got == [*before, last]
        assert leftover == trailing


def test_feeding_a_finished_reader_is_a_local_error() -> None:
    """After a terminal frame the caller must take the leftover, not parse more."""
    reader = p.FrameReader(ALL)
    assert reader.feed(p.encode(p.Connected()) + b"x") == [p.Connected()]
    with pytest.raises(LocalProtocolError):
        reader.feed(b"more")
    assert reader.take_leftover() == b"x"


def test_partial_frame_waits_for_more() -> None:
    """Half a frame yields nothing and is not an error."""
    frame = p.encode(p.Incoming(b"t" * 16))
    reader = p.FrameReader(ALL)
    assert reader.feed(frame[:5]) == []
    assert reader.feed(frame[5:]) == [p.Incoming(b"t" * 16)]


@pytest.mark.parametrize("length", [0, p.MAX_FRAME + 1, 0xFFFF])
def test_bad_length_is_rejected_from_the_prefix_alone(length: int) -> None:
    """An empty or oversized frame is refused as soon as its 2-byte length is read."""
    reader = p.FrameReader(ALL)
    with pytest.raises(RemoteProtocolError):
        reader.feed(struct.pack(">H", length))
    with pytest.raises(RemoteProtocolError):  # poisoned
        reader.feed(p.encode(p.Ping()))


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x03\xc1\xc1\xc1",  # not msgpack
        _raw(),  # empty array
        b"\x00\x01\x01",  # a bare int, not an array
        _raw("1"),  # type is not an int
        _raw(99),  # unknown type
        _raw(10, b"x"),  # Ping with a field
        _raw(1),  # Register without its key
        _raw(1, b"k" * 31),  # short key
        _raw(1, "k" * 32),  # key as text
        _raw(8, b"k" * 33),  # long key
        _raw(3, b"s" * 63),  # short signature
        _raw(6, b"t" * 15),  # short token
        _raw(7, b"t" * 33),  # long token
        _raw(5, "caf\u00e9"),  # non-ASCII reason
        _raw(5, "line\nbreak"),  # unprintable reason
        _raw(5, b"bytes"),  # reason as bytes
        _raw(5, "r" * (p.MAX_REASON + 1)),  # long reason
        struct.pack(">H", 4) + b"\x81\x01\x02\x03",  # a map
    ],
)
def test_garbage_and_bad_fields_are_rejected(frame: bytes) -> None:
    """Malformed frames raise RemoteProtocolError, whole or byte at a time."""
    with pytest.raises(RemoteProtocolError):
        p.FrameReader(ALL).feed(frame)
    reader = p.FrameReader(ALL)
    with pytest.raises(RemoteProtocolError):
        for i in range(len(frame)):
            reader.feed(frame[i : i + 1])


def test_role_filters_messages() -> None:
    """A node never accepts Connect; a client only Connected or Refused."""
    with pytest.raises(RemoteProtocolError):
        p.FrameReader(p.NODE_ACCEPTS).feed(p.encode(p.Connect(b"k" * 32)))
    with pytest.raises(RemoteProtocolError):
        p.FrameReader(p.CLIENT_ACCEPTS).feed(p.encode(p.Incoming(b"t" * 16)))
    assert p.FrameReader(p.CLIENT_ACCEPTS).feed(p.encode(p.Refused("no"))) == [p.Refused("no")]


@pytest.mark.parametrize(
    "msg",
    [
        p.Register(b"k" * 31),
        p.Connect("k" * 32),  # type: ignore[arg-type]
        p.Incoming(b"t" * 8),
        p.Accept(b"t" * 40),
        p.Proof(b"s"),
        p.Refused("\x1b[31m"),
    ],
)
def test_encoding_refuses_out_of_range_fields(msg: p.Message) -> None:
    """Our own bad values are a local error, never sent."""
    with pytest.raises(LocalProtocolError):
        p.encode(msg)


def test_proof_message_is_domain_separated() -> None:
    """The signed bytes are context || nonce || key, so a proof is bound to one challenge."""
    msg = p.proof_message(b"n" * 32, b"k" * 32)
    assert msg == b"p2pckpt 2026 relay register v1\x00" + b"n" * 32 + b"k" * 32


def test_protocol_module_is_pure() -> None:
    """protocol.py loads no trio (fresh interpreter)."""
    probe = (
        "import sys, p2pckpt.relay.protocol; "
        "print(any(m == 'trio' or m.startswith('trio.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
