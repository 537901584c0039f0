"""The serving bandwidth limit, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio

from p2pckpt.transfer.throttle import BURST_SECONDS, Throttle


async def test_rate_is_held_across_senders(autojump_clock: trio.abc.Clock) -> None:
    """Two senders sharing a 1 MB/s limit move 10 MB in about 10 s, not less."""
    throttle = Throttle(1_000_000)
    start = trio.current_time()

    async def sender() -> None:
        for _ in range(20):
            await throttle.take(250_000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(sender)
    elapsed = trio.current_time() - start
    assert 10 - BURST_SECONDS - 0.01 <= elapsed <= 10.01


async def test_small_bursts_do_not_wait(autojump_clock: trio.abc.Clock) -> None:
    """Within the burst allowance nothing waits."""
    throttle = Throttle(1_000_000)
    start = trio.current_time()
    await throttle.take(200_000)
    assert trio.current_time() == start


def test_rate_must_be_positive() -> None:
    """A zero rate is a configuration error, not an infinite wait."""
    with pytest.raises(ValueError):
        Throttle(0)
