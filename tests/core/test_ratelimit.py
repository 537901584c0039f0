"""The per-source handshake limiter, on a virtual clock."""

from __future__ import annotations

import pytest

from p2pckpt.net.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    """A burst is allowed at once; after it, one token per 1/rate seconds."""
    lim = RateLimiter(rate=10, burst=3)
    assert [lim.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not lim.allow("a", 0.05)  # half a token so far
    assert lim.allow("a", 0.15)  # 1.5 tokens: one is spent
    assert not lim.allow("a", 0.15)


def test_sources_are_independent() -> None:
    """One noisy source does not use up another's budget."""
    lim = RateLimiter(rate=1, burst=1)
    assert lim.allow("a", 0.0)
    assert not lim.allow("a", 0.1)
    assert lim.allow("b", 0.1)


def test_refill_is_capped_at_burst() -> None:
    """A long quiet period gives back at most ``burst`` tokens."""
    lim = RateLimiter(rate=100, burst=2)
    lim.allow("a", 0.0)
    assert [lim.allow("a", 1000.0) for _ in range(3)] == [True, True, False]


def test_table_is_bounded() -> None:
    """A flood of distinct sources cannot grow the table past max_keys."""
    lim = RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(10_000):
        lim.allow(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(lim) == 100


def test_clock_going_backwards_grants_nothing() -> None:
    """A clock jump backwards does not mint tokens."""
    lim = RateLimiter(rate=1, burst=1)
    assert lim.allow("a", 100.0)
    assert not lim.allow("a", 50.0)


def test_bad_parameters() -> None:
    """Nonsense limits are refused."""
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


def test_source_key_groups_ipv6_by_64() -> None:
    """IPv6 sources share a budget per /64; IPv4 (also v4-mapped) per address."""
    from p2pckpt.net.ratelimit import source_key

    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:10.0.0.1") == source_key("10.0.0.1") == "10.0.0.1"
    assert source_key("fe80::1%eth0") == source_key("fe80::2%eth1")
    assert source_key("not-an-ip") == "not-an-ip"
