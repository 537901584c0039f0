"""Decrypting straight into chunk bodies yields exactly what the copy path does."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pckpt.channel.noise import CipherState
from p2pckpt.channel.records import RecordDecoder, RecordEncoder
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import CLIENT_ACCEPTS, MessageReader, chunk_header, encode

KEY = os.urandom(32)


def _wire(payloads: list[bytes]) -> bytes:
    enc = RecordEncoder(CipherState(KEY))
    return b"".join(bytes(enc.encode(p)) for p in payloads)


def _via_commit_to(wire: bytes, cuts: list[int]) -> list[m.Message]:
    dec = RecordDecoder(CipherState(KEY), window=1 << 16)
    reader = MessageReader(CLIENT_ACCEPTS)
    out: list[m.Message] = []
    pos = 0
    for cut in [*sorted(cuts), len(wire)]:
        while pos < cut:
            space = dec.window()
            take = min(len(space), cut - pos)
            space[:take] = wire[pos : pos + take]
            space.release()
            dec.commit_to(take, reader)
            out.extend(reader.drain())
            pos += take
    return out


def _plain(msgs: list[m.Message]) -> list[object]:
    return [(x.req_id, bytes(x.data)) if isinstance(x, m.ChunkData) else x for x in msgs]


@settings(max_examples=40, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=4),
    together=st.booleans(),
    cuts=st.lists(st.integers(0, 900_000), max_size=6),
)
def test_commit_to_matches_feed(sizes: list[int], together: bool, cuts: list[int]) -> None:
    """Chunks (sent whole or packed with other messages) arrive intact via commit_to."""
    msgs: list[bytes] = []
    expected: list[object] = []
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        msgs.append(chunk_header(i, size) + data)
        expected.append((i, data))
        err = m.Error("not_found", f"e{i}", i)
        msgs.append(encode(err))
        expected.append(err)
    wire = _wire([b"".join(msgs)] if together else msgs)
    cuts = [c for c in cuts if c < len(wire)]
    assert _plain(_via_commit_to(wire, cuts)) == expected
