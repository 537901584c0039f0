"""The resume journal format (pure): which chunks of a partial copy are done.

::

    header = "P2PJ" || format (u8) || manifest root (32) || chunk count (u32 BE)
    record = chunk index (u32 BE) || check (4) ,  check = BLAKE3-derive(root || index)[:4]

Records are appended as chunks are written and verified. The journal is
advisory (R-46): it is bound to one manifest, a torn or garbled tail ends the
list, and every claimed chunk is re-hashed from the partial file before it
is trusted, so a lying or stale journal can cost time but never correctness.
"""

from __future__ import annotations

import struct
from typing import Final

import blake3

from p2pckpt.errors import ResumeStateInvalid

MAGIC: Final = b"P2PJ"
FORMAT: Final = 1
_HEADER = struct.Struct(">4sB32sI")
_RECORD = struct.Struct(">I4s")
HEADER_SIZE: Final = _HEADER.size
RECORD_SIZE: Final = _RECORD.size
_CONTEXT = "p2pckpt 2026 resume journal record v1"


def header(root: bytes, chunk_count: int) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT, root, chunk_count)


def _check(root: bytes, index: int) -> bytes:
    return blake3.blake3(root + index.to_bytes(4, "big"), derive_key_context=_CONTEXT).digest(4)


def record(root: bytes, index: int) -> bytes:
    return _RECORD.pack(index, _check(root, index))


def parse(data: bytes, root: bytes, chunk_count: int) -> set[int]:
    """Chunk indices the journal claims; raises ResumeStateInvalid if it is for
    another manifest or not a journal at all."""
    if len(data) < HEADER_SIZE:
        raise ResumeStateInvalid("journal too short")
    magic, fmt, jroot, jcount = _HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT:
        raise ResumeStateInvalid("not a p2pckpt journal")
    if jroot != root or jcount != chunk_count:
        raise ResumeStateInvalid("journal belongs to another version")
    done: set[int] = set()
    for pos in range(HEADER_SIZE, len(data) - RECORD_SIZE + 1, RECORD_SIZE):
        index, check = _RECORD.unpack_from(data, pos)
        if index >= chunk_count or check != _check(root, index):
            break  # torn or garbled tail: trust nothing after it
        done.add(index)
    return done
