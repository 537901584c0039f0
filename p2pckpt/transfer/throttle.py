"""A shared bandwidth limit for serving (``[limits] upload``, bytes/s).

The debt clock of ``net/pace`` with BURST_SECONDS of credit. One shared by
every connection of a server limits the node; one per peer (``[limits]
upload_per_peer``) limits each peer; trio wakes waiters in order, which keeps
a shared one fair enough between peers.
"""

from __future__ import annotations

from typing import Final

import trio

from p2pckpt.net.pace import DebtClock

BURST_SECONDS: Final = 0.25


class Throttle:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._clock = DebtClock(rate, BURST_SECONDS)

    async def take(self, n: int) -> None:
        """Account for ``n`` bytes about to be sent; wait if over the limit."""
        until = self._clock.charge(n, trio.current_time())
        if until is not None:
            await trio.sleep_until(until)
