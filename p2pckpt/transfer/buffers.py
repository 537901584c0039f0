"""The memory a pull spends on chunk bodies: a byte budget and a pool.

A chunk body lives in a buffer from the moment its first byte is decrypted
until its writer has verified and written it. How many exist at once is
decided when the request goes out, not when the answer comes in (by then
the peer is already sending):

* ``Room`` is the pull's budget: the bytes of every chunk asked for and not
  yet written or given up, across all connections and sources. A request
  goes out only while the room is not full (``RequestBook`` checks it), so
  at most ``capacity`` plus one chunk is on its way, whatever the number of
  streams or the size of the checkpoint;
* ``BufferPool`` hands out the buffers and takes them back for reuse (a
  fresh 4 MiB bytearray costs about a thousand page faults), keeping what it
  holds, free and in use together, within its own ``capacity``: a miss
  drops free buffers of other sizes before allocating.

Both are used from the trio thread only. Memory stays flat: a 16 GiB pull
holds no more than a 1 GiB one (issue 16); a pull from several sources gets
a larger budget (``room_for``), bounded by MAX_ROOM_BYTES.
"""

from __future__ import annotations

import weakref
from typing import Final

from p2pckpt.manifest.chunker import CHUNK_SIZE

ROOM_BYTES: Final = 6 * CHUNK_SIZE  # chunk bodies on their way in one pull
# Each source beyond the first adds this much, up to MAX_ROOM_BYTES: with 24 MiB
# shared by four hosts each holding a quarter of a multi-host version, a host
# had 1.5 chunks asked of it and its uplink ran at 65-80% (issue 21).
ROOM_PER_SOURCE: Final = 2 * CHUNK_SIZE
MAX_ROOM_BYTES: Final = 12 * CHUNK_SIZE


def room_for(sources: int) -> int:
    """A pull's budget of chunk bodies for ``sources`` sources."""
    return min(ROOM_BYTES + max(0, sources - 1) * ROOM_PER_SOURCE, MAX_ROOM_BYTES)


POOLED_MIN: Final = 256 * 1024  # smaller bodies are not worth pooling


class Room:
    """Bytes of chunk bodies a pull may have asked for and not yet written."""

    def __init__(self, capacity: int = ROOM_BYTES) -> None:
        self.capacity = capacity
        self.used = 0

    def has_room(self) -> bool:
        """Another request may go out (it may take the room past ``capacity``
        by less than one chunk)."""
        return self.used < self.capacity

    def take(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        if self.used < 0:  # pragma: no cover - a bookkeeping bug, not input
            raise AssertionError("room given back more than was taken")


class _Buffer(bytearray):
    """A pooled buffer: a bytearray the pool can hold a weak reference to."""

    __slots__ = ("__weakref__",)


class BufferPool:
    """Exact-size bytearrays, reused, within ``capacity`` bytes in all.

    Bodies under POOLED_MIN are plain allocations: malloc serves them from
    its arenas without page faults, and a directory of 10,000 small files
    would otherwise fill the pool with buffers of 10,000 sizes."""

    def __init__(self, capacity: int = ROOM_BYTES + CHUNK_SIZE) -> None:
        self.capacity = capacity
        self._free: dict[int, list[_Buffer]] = {}  # by size
        self._order: dict[int, _Buffer] = {}  # by id(): free buffers, oldest first
        self._free_bytes = 0
        # Handed out and not put back. Weak: a buffer lost with a connection
        # that died mid-chunk is not counted once it is gone.
        self._lent: weakref.WeakValueDictionary[int, _Buffer] = weakref.WeakValueDictionary()

    @property
    def in_use(self) -> int:
        """Pooled bytes handed out and not put back (nor collected)."""
        return sum(len(buf) for buf in list(self._lent.values()))

    def get(self, size: int) -> bytearray:
        if size < POOLED_MIN:
            return bytearray(size)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            del self._order[id(buf)]
            self._free_bytes -= size
        else:
            in_use = self.in_use
            while self._order and in_use + self._free_bytes + size > self.capacity:
                oldest = self._order.pop(next(iter(self._order)))
                same = self._free[len(oldest)]
                del same[next(i for i, b in enumerate(same) if b is oldest)]  # not by ==
                self._free_bytes -= len(oldest)
            buf = _Buffer(size)
        self._lent[id(buf)] = buf
        return buf

    def put(self, buf: bytearray) -> None:
        """Take ``buf`` back (a buffer ``get`` gave); kept if it fits."""
        size = len(buf)
        if not isinstance(buf, _Buffer) or self._lent.get(id(buf)) is not buf:
            return  # small, or not ours (or given back twice)
        del self._lent[id(buf)]
        if self.in_use + self._free_bytes + size <= self.capacity:
            self._free.setdefault(size, []).append(buf)
            self._order[id(buf)] = buf
            self._free_bytes += size

    @property
    def free_bytes(self) -> int:
        return self._free_bytes
