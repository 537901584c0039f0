"""Pausing a name's pulls (``daemon.pauses``): a pause stops a running pull
with ``Paused``, a pull started while paused stops at once, other names run
on, and resume lets waiters go."""

from __future__ import annotations

import pytest
import trio

from p2pckpt.daemon.pauses import Pauses
from p2pckpt.errors import Paused


async def test_pause_stops_a_running_pull_and_resume_lets_it_go() -> None:
    """The running pull of the paused name raises Paused; another name's is untouched."""
    pauses = Pauses()
    moved = {"m": 0, "other": 0}
    outcome: dict[str, str] = {}

    async def pull(name: str) -> None:
        try:
            with pauses.pulling(name, f"{name}@1"):
                while True:
                    moved[name] += 1
                    await trio.sleep(0.01)
        except Paused as exc:
            outcome[name] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "m")
        nursery.start_soon(pull, "other")
        await trio.sleep(0.05)
        assert pauses.pause("m") and not pauses.pause("m")
        await trio.sleep(0.05)
        frozen = moved["m"]
        await trio.sleep(0.05)
        assert moved["m"] == frozen and "other" not in outcome
        assert outcome["m"] == "m@1: paused (the chunks verified so far are kept)"
        nursery.cancel_scope.cancel()
    assert pauses.names() == ["m"]


async def test_a_pull_started_while_paused_stops_at_once() -> None:
    """No byte moves for a paused name; wait_resumed returns on resume."""
    pauses = Pauses()
    pauses.pause("m")
    with pytest.raises(Paused), pauses.pulling("m", "m@2"):
        await trio.sleep(10)
    resumed: list[bool] = []

    async def waiter() -> None:
        await pauses.wait_resumed("m")
        resumed.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.02)
        assert not resumed
        assert pauses.resume("m") and not pauses.resume("m")
    assert resumed == [True] and not pauses.paused("m")
    await pauses.wait_resumed("m")  # not paused: at once
