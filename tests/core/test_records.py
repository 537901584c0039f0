"""Tests for p2pckpt.channel.records: record framing, AEAD integrity and fail-closed decoding."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.channel.noise import CipherState, NoiseXX, generate_keypair
from p2pckpt.channel.records import (
    MAX_PLAINTEXT,
    MAX_RECORD,
    TAG_SIZE,
    RecordDecoder,
    RecordEncoder,
)
from p2pckpt.errors import AuthenticationFailed, RemoteProtocolError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MIB = 1 << 20


def pipe(key: bytes = KEY) -> tuple[RecordEncoder, RecordDecoder]:
    """An encoder and a decoder whose ciphers share one key (one direction of a channel)."""
    return RecordEncoder(CipherState(key)), RecordDecoder(CipherState(key))


def split_records(wire: bytes | bytearray) -> list[bytes]:
    """Cut an encoder's output into its records (length prefix included)."""
    records = []
    pos = 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">H", wire, pos)
        records.append(bytes(wire[pos : pos + 2 + length]))
        pos += 2 + length
    assert pos == len(wire)
    return records


def feed_all(decoder: RecordDecoder, pieces: list[bytes]) -> bytes:
    return b"".join(bytes(decoder.feed(p)) for p in pieces)


def random_pieces(data: bytes, seed: int, most: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, most)
        pieces.append(data[pos : pos + n])
        pos += n
    return pieces


SIZES = [0, 1, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 2 * MAX_PLAINTEXT, 5 * MIB]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_once(size: int) -> None:
    """Any amount of plaintext comes back unchanged when the wire bytes arrive at once."""
    data = random.Random(size).randbytes(size)
    enc, dec = pipe()
    assert bytes(dec.feed(enc.encode(data))) == data
    assert dec.buffered == 0


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_random_splits(size: int) -> None:
    """Any amount of plaintext comes back unchanged however the wire bytes are split."""
    data = random.Random(size).randbytes(size)
    enc, dec = pipe()
    wire = bytes(enc.encode(data))
    most = max(1, len(wire) // 20)
    assert feed_all(dec, random_pieces(wire, size, most)) == data
    assert dec.buffered == 0


@pytest.mark.parametrize("size", [0, 1, 17, 300])
def test_round_trip_byte_at_a_time(size: int) -> None:
    """Records fed one byte at a time decode only once complete, and then exactly."""
    data = bytes(range(256)) * 2
    data = data[:size]
    enc, dec = pipe()
    wire = bytes(enc.encode(data)) + bytes(enc.encode(b"second"))
    got = b""
    for i in range(len(wire)):
        got += bytes(dec.feed(wire[i : i + 1]))
        assert dec.buffered <= MAX_RECORD + 2
    assert got == data + b"second"


@settings(max_examples=100, database=None, deadline=None)
@given(
    writes=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
    most=st.integers(1, 400),
)
def test_many_writes_any_split(writes: list[bytes], seed: int, most: int) -> None:
    """A sequence of writes reads back as their concatenation under any splitting."""
    enc, dec = pipe()
    wire = b"".join(bytes(enc.encode(w)) for w in writes)
    assert feed_all(dec, random_pieces(wire, seed, most)) == b"".join(writes)


def test_round_trip_after_real_handshake() -> None:
    """Ciphers from a completed Noise XX handshake carry records both ways."""
    i_priv, _ = generate_keypair()
    r_priv, _ = generate_keypair()
    initiator = NoiseXX(initiator=True, static_private=i_priv, prologue=b"test")
    responder = NoiseXX(initiator=False, static_private=r_priv, prologue=b"test")
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    to_responder = RecordDecoder(r_recv)
    to_initiator = RecordDecoder(i_recv)
    assert bytes(to_responder.feed(RecordEncoder(i_send).encode(b"ping"))) == b"ping"
    assert bytes(to_initiator.feed(RecordEncoder(r_send).encode(b"pong"))) == b"pong"


@pytest.mark.parametrize("size", [0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 5 * MIB])
def test_records_respect_the_size_limit(size: int) -> None:
    """Every record on the wire is at most 65535 + 2 bytes, and all but the last are full."""
    enc, _ = pipe()
    records = split_records(enc.encode(bytes(size)))
    assert all(2 + TAG_SIZE <= len(r) <= MAX_RECORD + 2 for r in records)
    assert all(len(r) == MAX_RECORD + 2 for r in records[:-1])
    assert len(records) == max(1, -(-size // MAX_PLAINTEXT))


def test_flipped_bit_fails_and_poisons() -> None:
    """A flipped ciphertext bit raises AuthenticationFailed; every later feed raises too."""
    enc, _ = pipe()
    good = bytes(enc.encode(b"hello world"))
    for bit in range(16, len(good) * 8):  # every bit after the length prefix
        wire = bytearray(good)
        wire[bit // 8] ^= 1 << (bit % 8)
        dec = RecordDecoder(CipherState(KEY))
        with pytest.raises(AuthenticationFailed):
            dec.feed(bytes(wire))
        with pytest.raises(RemoteProtocolError):
            dec.feed(good)
        with pytest.raises(RemoteProtocolError):
            dec.feed(b"")


def test_wrong_key_fails() -> None:
    """A record sealed under another key does not authenticate."""
    enc, _ = pipe(OTHER_KEY)
    with pytest.raises(AuthenticationFailed):
        RecordDecoder(CipherState(KEY)).feed(enc.encode(b"hi"))


def _three_records() -> list[bytes]:
    enc, _ = pipe()
    return [bytes(enc.encode(w)) for w in (b"one", b"two", b"three")]


@pytest.mark.parametrize(
    "order",
    [(0, 2), (1,), (0, 0), (0, 1, 1), (1, 0), (0, 2, 1)],
    ids=["dropped", "first-dropped", "duplicated", "replayed", "swapped", "reordered"],
)
def test_dropped_duplicated_or_reordered_record_fails(order: tuple[int, ...]) -> None:
    """Records delivered out of sequence fail authentication at the first one out of place."""
    records = _three_records()
    dec = RecordDecoder(CipherState(KEY))
    expected_ok = 0
    while expected_ok < len(order) and order[expected_ok] == expected_ok:
        expected_ok += 1
    for i in order[:expected_ok]:
        dec.feed(records[i])
    with pytest.raises(AuthenticationFailed):
        dec.feed(records[order[expected_ok]])


def test_bad_record_after_good_ones_in_one_feed() -> None:
    """A bad record in the middle of one feed raises even though earlier ones were valid."""
    records = _three_records()
    dec = RecordDecoder(CipherState(KEY))
    with pytest.raises(AuthenticationFailed):
        dec.feed(records[0] + records[2])
    with pytest.raises(RemoteProtocolError):
        dec.feed(records[1])


@pytest.mark.parametrize("length", [0, 1, TAG_SIZE - 1])
def test_record_shorter_than_tag_rejected(length: int) -> None:
    """A record length below the 16-byte tag is a protocol error as soon as the prefix arrives."""
    dec = RecordDecoder(CipherState(KEY))
    with pytest.raises(RemoteProtocolError):
        dec.feed(struct.pack(">H", length))
    with pytest.raises(RemoteProtocolError):
        dec.feed(b"")


def test_tag_only_record_with_garbage_fails() -> None:
    """A 16-byte record that is not a valid empty-plaintext seal fails authentication."""
    with pytest.raises(AuthenticationFailed):
        RecordDecoder(CipherState(KEY)).feed(struct.pack(">H", TAG_SIZE) + bytes(TAG_SIZE))


def test_incomplete_record_is_buffered() -> None:
    """A partial record yields nothing and is held until the rest arrives."""
    enc, dec = pipe()
    wire = bytes(enc.encode(b"abc"))
    assert bytes(dec.feed(wire[:-1])) == b""
    assert dec.buffered == len(wire) - 1
    assert bytes(dec.feed(wire[-1:])) == b"abc"
    assert dec.buffered == 0
