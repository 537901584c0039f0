"""Helpers shared by the wire-message harnesses: one-shot decoding and the
round-trip check every decoded message must pass."""

from __future__ import annotations

from collections.abc import Callable

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.manifest.chunker import MAX_CHUNK
from p2pckpt.wire import codec
from p2pckpt.wire import messages as m
from p2pckpt.wire.packing import CODECS

ALL_ACCEPTS = codec.SERVER_ACCEPTS | codec.CLIENT_ACCEPTS


class Unfinishable(Exception):
    """A chunk body longer than the whole input: it can never complete, and
    allocating it (up to 16 MiB, a millisecond) would dominate the run."""


def bounded_alloc(limit: int) -> Callable[[int], bytearray]:
    """A MessageReader ``alloc`` that checks the cap and refuses bodies past ``limit``."""

    def alloc(n: int) -> bytearray:
        assert 0 < n <= MAX_CHUNK, n  # a chunk body is never allocated past its cap
        if n > limit:
            raise Unfinishable(n)
        return bytearray(n)

    return alloc


def decode_all(stream: bytes, accepts: frozenset[int] = ALL_ACCEPTS) -> list[m.Message] | None:
    """Every message in ``stream`` fed at once, or None if it is refused."""
    try:
        return codec.MessageReader(accepts, bounded_alloc(len(stream))).feed(stream)
    except RemoteProtocolError:
        return None


def check_message(msg: m.Message) -> None:
    """A decoded message is well-formed and survives encode -> decode unchanged."""
    if isinstance(msg, m.ChunkData):
        assert 0 < len(msg.data) <= MAX_CHUNK
        return
    if isinstance(msg, m.ChunkPacked):
        assert msg.codec in CODECS and 0 < len(msg.data) <= MAX_CHUNK
        return
    if isinstance(msg, m.Unknown):  # a type no release of ours sends: never re-encoded
        assert msg.kind not in codec._CAPS
        return
    again = decode_all(codec.encode(msg))
    assert again == [msg], (msg, again)
