"""A small deterministic mutator for the in-suite smoke run.

No coverage feedback (that is what ``scripts/fuzz.py`` and atheris are
for): byte flips, boundary values, msgpack type markers, inserts, deletes,
duplicated ranges and splices of the seeds, 1 to 4 at a time, driven by a
seeded ``random.Random`` so a failure reproduces exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x90, 0x91, 0x93, 0x94, 0xC0, 0xC2, 0xC3, 0xC4, 0xD9)
_WORDS = (b"\0\0", b"\xff\xff", b"\x7f\xff", b"\x80\0", b"\xdc\xff\xff", b"\xdd\0\x08\0\0")


def _mutate(data: bytearray, rng: random.Random, seeds: list[bytes]) -> None:
    op = rng.randrange(8)
    pos = rng.randrange(len(data) + 1)
    if op == 0 and data:
        data[pos % len(data)] ^= 1 << rng.randrange(8)
    elif op == 1 and data:
        data[pos % len(data)] = rng.choice(_BYTES)
    elif op == 2:
        data[pos:pos] = rng.choice(_WORDS)
    elif op == 3:
        data[pos:pos] = rng.randbytes(rng.randrange(1, 9))
    elif op == 4:
        del data[pos : pos + rng.randrange(1, 17)]
    elif op == 5 and data:
        start = rng.randrange(len(data))
        data[pos:pos] = data[start : start + rng.randrange(1, 33)]
    elif op == 6:
        other = rng.choice(seeds)
        cut = rng.randrange(len(other) + 1)
        data[pos:] = other[cut:]
    else:
        del data[pos:]


def mutants(seeds: list[bytes], count: int, seed: int = 0) -> Iterator[bytes]:
    """``count`` inputs derived from ``seeds``, the same ones for the same ``seed``."""
    rng = random.Random(seed)
    pool = [s for s in seeds if s] or [b"\0"]
    for _ in range(count):
        data = bytearray(rng.choice(pool))
        for _ in range(rng.randrange(1, 5)):
            _mutate(data, rng, pool)
        yield bytes(data)
