"""A small pool of chunk buffers, so the bulk path does not fault in fresh
memory for every chunk (a new 4 MiB bytearray costs ~1000 page faults)."""

from __future__ import annotations

from collections import defaultdict
from typing import Final

MAX_FREE: Final = 8


class BufferPool:
    """Exact-size bytearrays, reused. Not thread-safe: use from one trio thread."""

    def __init__(self, max_free: int = MAX_FREE) -> None:
        self._free: defaultdict[int, list[bytearray]] = defaultdict(list)
        self._count = 0
        self._max_free = max_free

    def get(self, size: int) -> bytearray:
        free = self._free.get(size)
        if free:
            self._count -= 1
            return free.pop()
        return bytearray(size)

    def put(self, buf: bytearray) -> None:
        """Return a buffer; beyond ``max_free`` it is left to the collector."""
        if self._count < self._max_free:
            self._free[len(buf)].append(buf)
            self._count += 1
