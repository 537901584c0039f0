"""A shared bandwidth limit for serving (``[limits] upload``, bytes/s).

The debt clock of ``net/pace`` with BURST_SECONDS of credit. One shared by
every connection of a server limits the node; one per peer (``[limits]
upload_per_peer``) limits each peer; trio wakes waiters in order, which keeps
a shared one fair enough between peers -- as long as no sender charges a whole
chunk at once: ``send_paced`` charges and sends SLICE bytes at a time, so a
4 KB answer waits behind one slice of a 4 MiB one, not all of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import trio

from p2pckpt.net.pace import DebtClock

BURST_SECONDS: Final = 0.25
SLICE: Final = 256 * 1024  # bytes charged and sent at a time by send_paced


class Throttle:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._clock = DebtClock(rate, BURST_SECONDS)

    async def take(self, n: int) -> None:
        """Account for ``n`` bytes about to be sent; wait if over the limit."""
        until = self._clock.charge(n, trio.current_time())
        if until is not None:
            await trio.sleep_until(until)


async def send_paced(
    send: Callable[[memoryview], Awaitable[None]],
    payload: memoryview,
    throttles: Sequence[Throttle],
    timeout: float,
) -> float:
    """Send ``payload`` a SLICE at a time, each charged to every throttle
    first; the seconds spent waiting for them. ``timeout`` bounds the time
    spent sending (a trickling reader), not the time the caps hold us back.
    Without throttles: one send."""
    if not throttles:
        with trio.fail_after(timeout):
            await send(payload)
        return 0.0
    waited = 0.0
    left = timeout
    for start in range(0, len(payload), SLICE):
        with payload[start : start + SLICE] as part:
            began = trio.current_time()
            for throttle in throttles:
                await throttle.take(len(part))
            sending = trio.current_time()
            waited += sending - began
            with trio.fail_after(max(left, 0.0)):
                await send(part)
            left -= trio.current_time() - sending
    return waited
