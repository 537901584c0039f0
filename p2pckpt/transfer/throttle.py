"""A shared bandwidth limit for serving (``[limits] bandwidth``, bytes/s).

A debt clock: each send pushes "paid until" forward by n / rate, and a
sender waits once that is more than BURST_SECONDS ahead of now. Shared by
every connection of a server, so the limit is for the node, not per peer;
trio wakes waiters in order, which keeps it fair enough between peers.
"""

from __future__ import annotations

from typing import Final

import trio

BURST_SECONDS: Final = 0.25


class Throttle:
    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._paid_until = 0.0

    async def take(self, n: int) -> None:
        """Account for ``n`` bytes about to be sent; wait if over the limit."""
        now = trio.current_time()
        self._paid_until = max(self._paid_until, now) + n / self.rate
        if self._paid_until - now > BURST_SECONDS:
            await trio.sleep_until(self._paid_until - BURST_SECONDS)
