"""Per-source token buckets (pure; time is an argument).

Used before any cryptography: a source that opens connections faster than
``rate`` per second (after a ``burst``) is dropped without a handshake, so a
flood costs us an accept and a close, not a Diffie-Hellman (R-10, R-53). The
table is bounded: the least recently seen sources are forgotten first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Final

DEFAULT_RATE: Final = 20.0
DEFAULT_BURST: Final = 32.0
MAX_SOURCES: Final = 4096


def source_key(host: str) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one host
    can own a whole /64, so per-address limits would be no limit)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


class RateLimiter:
    """``allow(key, now)`` is True while ``key`` stays within its budget."""

    def __init__(
        self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, max_keys: int = MAX_SOURCES
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate > 0, burst >= 1, max_keys >= 1")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
