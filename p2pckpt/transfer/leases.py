"""The seeder's chunk buffers: a server-wide budget, each peer's share, and
what one connection holds (the client side's pool is ``buffers``).

Theory of operation
-------------------

A chunk on its way out sits in a buffer of up to one chunk (MAX_CHUNK) from the
moment its read starts until its send ends, so the number of buffers bounds
the server's memory. Three layers hold them:

* the ``BufferBudget``: at most MAX_CHUNK_BUFFERS exist for the whole
  server, however many peers pull (R-50, R-52); freed buffers are reused;
* a peer's ``Share``: at most PEER_BUFFERS of those for one peer, however
  many connections it opens, so one peer that never reads cannot starve
  the others (R-65); the share also carries the peer's upload throttle and
  its open connections' cancel scopes (closed when it stops being trusted);
* a connection's ``Lease``: takes a slot from its peer's share, then one
  from the budget (so a peer at its share waits without holding a
  server-wide slot), and counts what it holds. ``close`` at the
  connection's end returns every slot still held, however the connection
  ended (reset, kill, timeout, cancellation with a chunk queued or half
  sent): a slot lost per dead connection would wedge the server after a
  few killed pulls (R-66).

A buffer whose state is unknown (a send or read interrupted, views maybe
still alive) is returned as ``None``: its slot comes back, the buffer itself
is left to the collector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import trio

from p2pckpt.transfer.throttle import Throttle

# 8 buffers of 4 MiB keep a serving node near 80 MiB (issue 16); one peer
# fills a fast link with 6 (two per connection at 3 streams), the rest
# keep other peers served while a hog sits on its share.
MAX_CHUNK_BUFFERS: Final = 8
PEER_BUFFERS: Final = 6  # one peer's share, however many connections


class BufferBudget:
    """Chunk buffers shared by every connection: at most ``count`` exist, so
    server memory is bounded whatever the number of peers (R-50, R-52)."""

    def __init__(self, count: int) -> None:
        self._slots = trio.Semaphore(count)
        self._free: list[bytearray] = []

    async def acquire(self) -> bytearray:
        await self._slots.acquire()
        return self._free.pop() if self._free else bytearray()

    def release(self, buf: bytearray | None) -> None:
        """Give a slot back; ``buf`` is reused unless None (possibly still in use)."""
        if buf is not None:
            self._free.append(buf)
        self._slots.release()


@dataclass
class Share:
    """One peer's share of the server, whatever its number of connections: at
    most PEER_BUFFERS chunk buffers and its own upload rate (``[limits]
    upload_per_peer``), so no single peer can starve the others (R-65); and
    its open connections, closed when it stops being trusted."""

    slots: trio.Semaphore
    throttle: Throttle | None
    scopes: set[trio.CancelScope] = field(default_factory=set)

    @classmethod
    def for_peer(cls, rate: int) -> Share:
        """A fresh share: PEER_BUFFERS slots, ``rate`` bytes/s (0: no cap)."""
        return cls(trio.Semaphore(PEER_BUFFERS), Throttle(rate) if rate > 0 else None)


class Lease:
    """The chunk buffers one connection holds from the server's budget (and
    its peer's share); ``close`` returns whatever is still held."""

    def __init__(self, budget: BufferBudget, share: Share) -> None:
        self._budget = budget
        self._share = share
        self.held = 0

    async def acquire(self) -> bytearray:
        """A buffer, once both the peer's share and the budget have a slot.
        Cancelling it is safe: no slot is kept."""
        await self._share.slots.acquire()
        try:
            buf = await self._budget.acquire()
        except BaseException:
            self._share.slots.release()
            raise
        self.held += 1
        return buf

    def release(self, buf: bytearray | None) -> None:
        self.held -= 1
        self._budget.release(buf)
        self._share.slots.release()

    def close(self) -> None:
        """Give back what is still held (buffers not reused: views may remain)."""
        while self.held:
            self.release(None)
