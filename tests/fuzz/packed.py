"""Packed chunk decoding: ``packing.unpack`` on a hostile ``ChunkPacked`` body.

Contract (wire/packing.py): exactly the chunk's length from one well-formed
zstd frame, or ``RemoteProtocolError``; nothing is allocated past the
chunk's length. Also checked: what unpacks is what the frame holds (after
ungrouping), and ``pack`` -> ``unpack`` round-trips the input's own bytes.

Input: codec byte (mod 5: 0 and 4 are unknown codecs), chunk length - 1
(u16), then the packed bytes.
"""

from __future__ import annotations

import zstandard

from p2pckpt.errors import RemoteProtocolError
from p2pckpt.wire import packing
from tests.fuzz._input import Input

NAME = "packed"
MAX_LEN = 1 << 16

_PLAIN = zstandard.ZstdDecompressor()


def one_input(data: bytes) -> None:
    inp = Input(data)
    codec, length = inp.byte() % 5, inp.uint(2) + 1
    packed = inp.rest()
    out = bytearray(length)
    try:
        packing.unpack(codec, packed, out)
    except RemoteProtocolError:
        pass
    else:
        assert len(out) == length
        frame = _PLAIN.decompress(packed, max_output_size=length)
        assert packing.group(bytes(out), packing.WIDTH[codec]) == frame
    if codec in packing.CODECS and packed:
        again = packing.pack(codec, packed)
        if len(again) < len(packed):  # the only case a seeder sends it packed
            back = bytearray(len(packed))
            packing.unpack(codec, again, back)
            assert back == packed


def seeds() -> list[bytes]:
    """Each codec over zeros, bf16-like and fp32-like patterns, and odd tails."""
    samples = [
        bytes(4096),
        bytes(range(256)) * 8,
        b"\x3f\x80\x00\x00" * 300 + b"\x01\x02\x03",
        b"\x12\x3f" * 1000 + b"\x07",
    ]
    out = []
    for codec in packing.CODECS:
        for plain in samples:
            packed = packing.pack(codec, plain)
            out.append(bytes((codec,)) + (len(plain) - 1).to_bytes(2, "big") + packed)
    return out
