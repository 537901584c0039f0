"""Msgpack message bodies: every wire message type, framed correctly.

The frame header is built by the harness from the input (type and exact
length), so every input reaches a type's body validation instead of dying
at the header. Contract (wire/codec.py): a message or ``RemoteProtocolError``;
any decoded message survives encode -> decode unchanged.

Input: type byte (mod 14, + 1), then the body.
"""

from __future__ import annotations

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.wire import codec
from tests.fuzz.values import messages
from tests.fuzz.wire import ALL_ACCEPTS, check_message

NAME = "bodies"
MAX_LEN = 1 << 16


def one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 14 + 1, data[1:]
    if len(body) > codec._CAPS[kind]:
        return
    frame = codec._HEADER.pack(kind, len(body)) + body
    try:
        got = codec.MessageReader(ALL_ACCEPTS).feed(frame)
    except RemoteProtocolError:
        return
    assert len(got) == 1, got
    check_message(got[0])


def seeds() -> list[bytes]:
    """Every message's body with its type byte, plus the older short forms."""
    out = []
    for msg in messages():
        raw = codec.encode(msg)
        out.append(bytes((raw[0] - 1,)) + raw[codec.HEADER_SIZE :])
    root = bytes(32)
    legacy = [  # the 3-element Have, the 4-element PushRequest (no peers)
        codec._pack(12, [root, False, b"\x01"]),
        codec._pack(8, ["name", 1, root, 7450]),
    ]
    out += [bytes((raw[0] - 1,)) + raw[codec.HEADER_SIZE :] for raw in legacy]
    return out
