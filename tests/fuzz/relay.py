"""Relay control frames: ``FrameReader`` for each role, on a stream cut anywhere.

Contract (relay/protocol.py): messages, or ``RemoteProtocolError`` after
which the reader stays poisoned; parsing stops after a terminal message and
every later byte comes back, untouched, as leftover. Also checked: the cut
does not change the messages or the leftover, at most one partial frame is
buffered, and every message survives encode -> decode.

Input: role byte (mod 4: relay's first frame, relay, node, client), step
byte (cut size), then the stream.
"""

from __future__ import annotations

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.relay import protocol as p
from tests.fuzz._input import Input, pieces
from tests.fuzz.contract import check_refusal

NAME = "relay"
MAX_LEN = 8192

_ROLES = (p.RELAY_FIRST, p.RELAY_ACCEPTS, p.NODE_ACCEPTS, p.CLIENT_ACCEPTS)


def _read(accepts: frozenset[type], chunks: list[bytes]) -> tuple[list[p.Message], bytes] | None:
    """Messages and leftover (what followed a terminal message, or was not a
    whole frame), or None if refused."""
    reader = p.FrameReader(accepts)
    got: list[p.Message] = []
    try:
        for i, chunk in enumerate(chunks):
            got += reader.feed(chunk)
            if reader.finished:
                return got, reader.take_leftover() + b"".join(chunks[i + 1 :])
            assert len(reader._buf) < 2 + p.MAX_FRAME  # one partial frame at most
    except RemoteProtocolError as exc:
        check_refusal(exc)
        try:
            reader.feed(b"\0\1\0")
        except RemoteProtocolError:
            return None
        raise AssertionError("a failed reader accepted more bytes") from None
    return got, reader.take_leftover()


def one_input(data: bytes) -> None:
    inp = Input(data)
    accepts = _ROLES[inp.byte() % 4]
    step = inp.byte() + 1
    stream = inp.rest()
    whole = _read(accepts, [stream])
    cut = _read(accepts, pieces(stream, step))
    assert cut == whole, (cut, whole)
    if whole is None:
        return
    got, leftover = whole
    assert stream.endswith(leftover)
    assert not any(type(msg) in p.TERMINAL for msg in got[:-1])  # parsing stops after one
    for msg in got:
        assert type(msg) in accepts
        assert p.decode(p.encode(msg)[2:]) == msg


def seeds() -> list[bytes]:
    """Each role's conversation as one stream, with bytes after a terminal frame."""
    key, token = bytes(range(32)), bytes(range(16))
    talks = (
        (0, [p.Register(key), p.Proof(bytes(64)), p.Ping()]),
        (0, [p.Connect(key)]),
        (0, [p.Accept(token)]),
        (1, [p.Proof(bytes(range(64))), p.Pong(), p.Ping(), p.Connect(key)]),
        (2, [p.Challenge(key), p.Registered(), p.Incoming(token), p.Refused("busy"), p.Ping()]),
        (3, [p.Refused("no such peer")]),
        (3, [p.Connected()]),
    )
    out = []
    for role, msgs in talks:
        stream = b"".join(p.encode(x) for x in msgs) + b"\x16\x03\x01 noise bytes"
        out += [bytes((role, 255)) + stream, bytes((role, 2)) + stream]
    return out
