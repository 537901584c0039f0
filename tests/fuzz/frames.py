"""Frame codec: ``MessageReader`` reassembling a stream cut anywhere.

Contract (wire/codec.py): any bytes either give messages or raise
``RemoteProtocolError``, after which the reader stays poisoned. Also
checked: cutting the stream differently (and filling bodies through the
zero-copy ``direct``/``advanced`` path) gives the same messages or the same
refusal; buffered header bytes and allocated bodies stay within the
per-type caps; every message survives a round trip.

Input: role byte (bit 0: server or client side; bit 1: zero-copy path),
step byte (cut size, coarser for long streams), then the stream.
"""

from __future__ import annotations

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.wire import codec
from p2pckpt.wire import messages as m
from tests.fuzz._input import Input, pieces
from tests.fuzz.contract import check_refusal
from tests.fuzz.values import messages
from tests.fuzz.wire import Unfinishable, bounded_alloc, check_message

NAME = "frames"
MAX_LEN = 1 << 16
_MAX_PIECES = 64  # a long stream is cut coarser: runs stay fast


def _feed(reader: codec.MessageReader, piece: bytes, zero_copy: bool) -> list[m.Message]:
    """Feed ``piece``, writing into the body buffer in place where the reader offers it."""
    if zero_copy:
        space = reader.direct(len(piece))
        if space is not None:
            space[:] = piece
            reader.advanced(len(piece))
            return reader.drain()
    return reader.feed(piece)


def _read(
    accepts: frozenset[int], chunks: list[bytes], zero_copy: bool
) -> tuple[list[m.Message], str]:
    """The messages, and how the stream ended: "ok", "refused" or "unfinishable"."""
    reader = codec.MessageReader(accepts, bounded_alloc(sum(map(len, chunks))))
    got: list[m.Message] = []
    try:
        for chunk in chunks:
            got += _feed(reader, chunk, zero_copy)
            assert len(reader._buf) <= codec.PACKED_HEADER_SIZE  # only a header is buffered
            body = reader._body
            cap = codec._CAPS.get(reader._kind, codec.UNKNOWN_CAP)  # a newer peer's type
            assert body is None or len(body) <= cap
    except Unfinishable:
        return got + reader.drain(), "unfinishable"
    except RemoteProtocolError as exc:
        check_refusal(exc)
        try:
            reader.feed(b"\0")
        except RemoteProtocolError:
            return got + reader.drain(), "refused"
        raise AssertionError("a failed reader accepted more bytes") from None
    return got, "ok"


def one_input(data: bytes) -> None:
    inp = Input(data)
    role, step = inp.byte(), inp.byte()
    stream = inp.rest()
    accepts = codec.SERVER_ACCEPTS if role & 1 else codec.CLIENT_ACCEPTS
    whole = _read(accepts, [stream], False)
    cut = _read(accepts, pieces(stream, max(step + 1, len(stream) // _MAX_PIECES)), role & 2 > 0)
    assert cut[1] == whole[1], "cutting the stream changed how it ends"
    if whole[1] == "ok":
        assert cut[0] == whole[0], "cutting the stream changed the messages"
    else:  # messages of the feed call that failed are dropped with it
        short, long = sorted((whole[0], cut[0]), key=len)
        assert long[: len(short)] == short, "cutting the stream changed the messages"
    for msg in cut[0]:
        assert type(msg).__name__ in _NAMES[role & 1] | {"Unknown"}
        check_message(msg)


def _names(accepts: frozenset[int]) -> frozenset[str]:
    """Message class names a role accepts (from one encoded sample each)."""
    return frozenset(type(x).__name__ for x in messages() if codec.encode(x)[0] in accepts)


_NAMES = {1: _names(codec.SERVER_ACCEPTS), 0: _names(codec.CLIENT_ACCEPTS)}


def seeds() -> list[bytes]:
    """Each role's messages as one stream, whole and cut small, plus single frames."""
    out = []
    for role, accepts in ((1, codec.SERVER_ACCEPTS), (0, codec.CLIENT_ACCEPTS)):
        frames = [codec.encode(x) for x in messages() if codec.encode(x)[0] in accepts]
        stream = b"".join(frames)
        out += [bytes((role, 255)) + stream, bytes((role | 2, 6)) + stream]
        out += [bytes((role | 2, 0)) + f for f in frames]
    return out
