"""The serving bandwidth limit, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio

from p2pckpt.transfer.throttle import BURST_SECONDS, SLICE, Throttle, send_paced


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


async def test_a_small_answer_waits_behind_one_slice_not_a_whole_chunk(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two connections share a 1 MB/s cap: a 4 KB answer sent while a 4 MiB
    chunk is going out is through in well under a second, and the chunk
    still takes the cap's ~4 s (the test the daemon's follower of a small
    version failed, waiting behind a big one for the whole chunk)."""
    throttle = Throttle(1_000_000)
    done: dict[str, float] = {}
    sent: dict[str, int] = {"big": 0, "small": 0}

    async def answer(name: str, size: int, after: float) -> None:
        await trio.sleep(after)

        async def send(part: memoryview) -> None:
            sent[name] += len(part)
            await trio.lowlevel.checkpoint()

        await send_paced(send, memoryview(bytes(size)), [throttle], timeout=60)
        done[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, "big", 4 * 1024 * 1024, 0)
        nursery.start_soon(answer, "small", 4000, 0.5)
    assert sent == {"big": 4 * 1024 * 1024, "small": 4000}
    assert done["small"] - start < 0.5 + 0.3  # one slice at 1 MB/s: 0.26 s
    assert done["big"] - start >= 4 * 1024 * 1024 / 1_000_000 - BURST_SECONDS


async def test_paced_send_timeout_counts_sending_not_waiting(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Held back 3 s by a cap, a send with a 1 s timeout still completes;
    a reader that stops taking bytes is given up on after the timeout."""
    throttle = Throttle(1_000_000)

    async def send(part: memoryview) -> None:
        await trio.lowlevel.checkpoint()

    waited = await send_paced(send, memoryview(bytes(3_000_000)), [throttle], timeout=1)
    assert waited >= 3 - BURST_SECONDS - SLICE / 1_000_000

    async def stuck(part: memoryview) -> None:
        await trio.sleep_forever()

    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await send_paced(stuck, memoryview(bytes(1000)), [throttle], timeout=1)
    assert trio.current_time() - start <= 1 + 1000 / 1_000_000 + 0.01 + BURST_SECONDS
    with pytest.raises(trio.TooSlowError):
        await send_paced(stuck, memoryview(bytes(1000)), [], timeout=1)
