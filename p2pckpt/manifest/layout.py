"""Format-aware chunk boundaries: chunks that survive a shifted file (issue 6).

Fixed 4 MiB chunks of a safetensors file change all at once when its JSON
header grows by a few bytes, because every tensor moves. Here boundaries
are placed relative to the tensors instead: the header is cut off on its
own, and the data section is cut at tensor starts (once at least
MIN_SEGMENT bytes have passed since the last cut, so runs of small tensors
share chunks), each segment then split every CHUNK_SIZE bytes from its own
start. The cuts depend only on where tensors sit *within the data section*,
so a grown header, or a tensor rewritten in place, leaves every other chunk
byte-for-byte the same.

Pure: it sees the file's first bytes, never the file. Anything that does
not parse as safetensors gets the fixed boundaries.
"""

from __future__ import annotations

import itertools
import json
import struct
from typing import Final

from p2pckpt.manifest.chunker import CHUNK_SIZE, boundaries

MIN_SEGMENT: Final = 1 << 20
MAX_HEADER: Final = 100 << 20  # 100 MiB: a little above the format's own 100_000_000


def safetensors_header_length(first8: bytes, size: int) -> int | None:
    """The JSON header's length from a file's first 8 bytes, if plausible."""
    if len(first8) < 8:
        return None
    (n,) = struct.unpack("<Q", first8[:8])
    return n if 0 < n <= MAX_HEADER and 8 + n <= size else None


def safetensors_cuts(header: bytes, size: int) -> list[int] | None:
    """Offsets where chunks must start, from the 8-byte length and JSON header
    (``header`` is both); None if it is not a sane safetensors header."""
    n = safetensors_header_length(header, size)
    if n is None or len(header) < 8 + n:
        return None
    try:
        doc = json.loads(header[8 : 8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    data = 8 + n
    starts = set()
    for key, entry in doc.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size - data
        ):
            return None
        starts.add(offsets[0])
    cuts = [0, data]
    last = 0
    for start in sorted(starts):
        if start - last >= MIN_SEGMENT:
            cuts.append(data + start)
            last = start
    return [c for c in cuts if c < size]


def plan(
    size: int, cuts: list[int] | None = None, chunk_size: int = CHUNK_SIZE
) -> list[tuple[int, int]]:
    """``(offset, length)`` of every chunk: each segment between cuts split
    every ``chunk_size`` bytes from its start (fixed boundaries if no cuts)."""
    if not cuts:
        return boundaries(size, chunk_size)
    edges = [*sorted({c for c in cuts if 0 <= c < size} | {0}), size]
    out = []
    for lo, hi in itertools.pairwise(edges):
        out += [(lo + off, length) for off, length in boundaries(hi - lo, chunk_size)]
    return out
