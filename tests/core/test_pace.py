"""The debt clock behind every bandwidth cap (pure)."""

from __future__ import annotations

import pytest

from p2pckpt.net.pace import DebtClock


def test_sends_within_the_burst_go_on_at_once() -> None:
    clock = DebtClock(rate=1000, burst=0.5)
    assert clock.charge(400, now=0.0) is None  # paid until 0.4
    assert clock.charge(100, now=0.0) is None  # 0.5: exactly the burst
    assert clock.charge(100, now=0.0) == pytest.approx(0.1)  # 0.6 - 0.5


def test_idle_time_is_not_saved_up_beyond_the_burst() -> None:
    clock = DebtClock(rate=1000, burst=0.25)
    clock.charge(1000, now=0.0)
    assert clock.charge(200, now=100.0) is None  # the old debt is long paid
    assert clock.charge(200, now=100.0) == pytest.approx(100.15)


def test_rate_is_the_long_run_limit() -> None:
    clock = DebtClock(rate=1e6, burst=0.1)
    now = 0.0
    for _ in range(1000):
        until = clock.charge(10_000, now)
        if until is not None:
            now = until
    assert now == pytest.approx(10.0 - 0.1, rel=1e-6)  # 10 MB at 1 MB/s, less the burst


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, -0.1)])
def test_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        DebtClock(rate, burst)
