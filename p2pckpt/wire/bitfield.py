"""Chunk sets as Python ints (bit i = chunk i), and their wire form (pure).

A Have message carries a bitfield: bit i of byte i//8, least significant
bit first. In memory the same set is an int used as a bitmap, so whole sets
move with one ``|`` or ``&``.
"""

from __future__ import annotations

from collections.abc import Iterable


def bits_of(indices: Iterable[int]) -> int:
    out = 0
    for i in indices:
        out |= 1 << i
    return out


def indices_of(bits: int) -> list[int]:
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


def bitfield_to_int(data: bytes, count: int) -> int:
    """A wire bitfield (bit i of byte i//8, LSB first) as a bitmap of ``count`` chunks."""
    return int.from_bytes(data, "little") & ((1 << count) - 1)


def int_to_bitfield(bits: int, count: int) -> bytes:
    return bits.to_bytes((count + 7) // 8, "little")
