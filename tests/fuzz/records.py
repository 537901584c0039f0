"""AEAD record framing: ``RecordDecoder`` on a stream of real records that the
input builds, tampers with and delivers in pieces, decrypting into a
``MessageReader`` through the zero-copy sink path.

Contract (channel/records.py): plaintext, or ``AuthenticationFailed`` /
``RemoteProtocolError``, after which the decoder is poisoned. Also checked:
whatever decrypts is a prefix of what was sent (records cannot be forged,
cut, replayed or reordered), untampered streams decrypt whole and give the
same messages as the plaintext fed directly, and no more than one record is
ever buffered.

Input: mode byte (bit 0: ``feed`` instead of ``window``/``commit_to``;
bits 1-3: delivery step, coarser for long wires), then ops until the input ends: op byte
(low 2 bits: 0 seal the next N input bytes as records, 1 append N raw
bytes, 2 flip bit N of the wire, 3 seal N zero bytes), N (u16); no more
ops once the wire holds about three full records.
"""

from __future__ import annotations

from p2pckpt.channel.noise import CipherState
from p2pckpt.channel.records import MAX_RECORD, RecordDecoder, RecordEncoder
from p2pckpt.errors import AuthenticationFailed, RemoteProtocolError
from p2pckpt.wire import codec
from tests.fuzz._input import Input
from tests.fuzz.values import messages
from tests.fuzz.wire import Unfinishable, bounded_alloc, decode_all

NAME = "records"
MAX_LEN = 1 << 17

KEY = bytes(range(32))
_STEPS = (1, 3, 17, 100, 1000, 4096, 65537, 1 << 30)
_MAX_OPS = 64
_MAX_PIECES = 64  # a long wire is cut coarser: runs stay fast
_MAX_WIRE = 3 * MAX_RECORD  # room for records of every size, and a chunk across them


class _Tee:
    """A PlaintextSink in front of a MessageReader that records every
    plaintext byte it is given, in place or copied."""

    def __init__(self, reader: codec.MessageReader) -> None:
        self.reader = reader
        self.seen = bytearray()
        self._space: memoryview | None = None

    def direct(self, size: int) -> memoryview | None:
        self._space = self.reader.direct(size)
        return self._space

    def advanced(self, size: int) -> None:
        assert self._space is not None and len(self._space) == size
        self.seen += self._space
        self.reader.advanced(size)

    def absorb(self, data: memoryview) -> None:
        self.seen += data
        self.reader.absorb(data)


def one_input(data: bytes) -> None:
    inp = Input(data)
    mode = inp.byte()
    step = _STEPS[mode >> 1 & 7]
    encoder = RecordEncoder(CipherState(KEY))
    wire, plain = bytearray(), bytearray()
    tampered = False
    for _ in range(_MAX_OPS):
        if not len(inp) or len(wire) > _MAX_WIRE:
            break
        op, n = inp.byte() & 3, inp.uint(2)
        if op in (0, 3):
            piece = inp.take(n) if op == 0 else bytes(n)
            wire += encoder.encode(piece)
            plain += piece
        elif op == 1:
            wire += inp.take(n)
            tampered = True
        elif wire:
            wire[n // 8 % len(wire)] ^= 1 << n % 8
            tampered = True
    decoder = RecordDecoder(CipherState(KEY), window=1024)
    tee = _Tee(codec.MessageReader(codec.CLIENT_ACCEPTS, bounded_alloc(len(plain))))
    failed = None
    try:
        if mode & 1:
            tee.seen += decoder.feed(bytes(wire))
        else:
            pos, step = 0, max(step, len(wire) // _MAX_PIECES)
            while pos < len(wire):
                space = decoder.window()
                take = min(len(space), step, len(wire) - pos)
                space[:take] = wire[pos : pos + take]
                pos += take
                decoder.commit_to(take, tee)
                assert decoder.buffered <= 2 + MAX_RECORD
    except Unfinishable:
        assert plain.startswith(tee.seen)
        return
    except (AuthenticationFailed, RemoteProtocolError) as exc:
        failed = exc
        try:
            decoder.window()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("a failed decoder gave a window") from None
    assert plain.startswith(tee.seen), "decrypted bytes that were never sent"
    if tampered:
        return
    if mode & 1:
        assert failed is None and tee.seen == plain
        return
    expected = decode_all(bytes(plain), codec.CLIENT_ACCEPTS)
    if expected is None:
        assert isinstance(failed, RemoteProtocolError)
        return
    assert failed is None and tee.seen == plain
    assert tee.reader.drain() == expected


def _op(op: int, n: int) -> bytes:
    return bytes((op,)) + n.to_bytes(2, "big")


def seeds() -> list[bytes]:
    """Server replies as records: small pieces, a chunk sealed whole, some tampering."""
    replies = [codec.encode(x) for x in messages() if codec.encode(x)[0] in codec.CLIENT_ACCEPTS]
    ops = b"".join(_op(0, len(r)) + r for r in replies)
    chunk = codec.chunk_header(9, 5000)
    big = _op(0, len(chunk)) + chunk + _op(3, 5000)
    out = []
    for mode in (0, 1, 4, 8, 15):
        out += [bytes((mode,)) + ops, bytes((mode,)) + big]
    out += [b"\x00" + ops + _op(2, 77), b"\x06" + big + _op(1, 3) + b"abc"]
    return out
