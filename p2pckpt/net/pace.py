"""The one debt clock behind every bandwidth cap (pure; time is an argument).

Each send of ``n`` bytes pushes "paid until" forward by ``n / rate``; a sender
may run up to ``burst`` seconds ahead of now, and waits until the debt is
back within that. Used by the seeder's upload caps (``transfer/throttle``)
and the relay's per-session bandwidth (``relay/splice``).
"""

from __future__ import annotations


class DebtClock:
    """Bytes per second, with ``burst`` seconds of credit."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 0:
            raise ValueError("rate must be positive and burst not negative")
        self.rate = rate
        self.burst = burst
        self._paid_until = 0.0

    def charge(self, n: int, now: float) -> float | None:
        """Account for ``n`` bytes sent at ``now``; the time to wait until
        before sending more, or None to go on at once."""
        self._paid_until = max(self._paid_until, now) + n / self.rate
        if self._paid_until - now > self.burst:
            return self._paid_until - self.burst
        return None
