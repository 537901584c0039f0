"""How commands stop on SIGTERM and Ctrl-C.

SIGTERM stops a command as Ctrl-C does, with one line on stderr and exit 130
(``errors.Interrupted``): a pull (``run_stoppable``) is cancelled cleanly,
its journal and the chunks written flushed so the next run resumes; the
servers (``serve``, ``daemon``, ``relay``: ``run_until_signalled``) stop on
SIGTERM or SIGINT once running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

from p2pckpt.errors import Interrupted

if TYPE_CHECKING:
    import trio

T = TypeVar("T")
_stopped_by = "Ctrl-C"


def interrupted() -> Interrupted:
    """The error for a command stopped by Ctrl-C or by the signal that stopped it."""
    return Interrupted(_stopped_by)


def run_stoppable(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``, where SIGTERM (systemd, ``docker stop``, ``kill``)
    cancels ``fn`` and raises Interrupted once it has unwound: every
    ``finally`` runs, so a pull closes its staging area (journal and written
    chunks flushed) and its connections, as the daemon does on SIGTERM."""
    import trio

    async def main() -> T:
        global _stopped_by
        results: list[T] = []
        stopped = False

        async def body(scope: trio.CancelScope) -> None:
            results.append(await fn())
            scope.cancel()

        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                nursery.start_soon(body, nursery.cancel_scope)
                async for signum in signals:
                    _stopped_by, stopped = signal.Signals(signum).name, True
                    nursery.cancel_scope.cancel()
                    break
        if stopped and not results:
            raise interrupted()
        return results[0]

    return trio.run(main)


def run_until_signalled(start: Callable[[trio.Nursery], Awaitable[None]], logger: str) -> None:
    """Run a server until SIGTERM or SIGINT: ``start(nursery)`` starts its
    tasks (and says where it listens); the first signal after that logs
    "shutting down" on ``logger`` and cancels them all. INFO lines are logged
    even without ``-v``."""
    import trio

    logging.getLogger("p2pckpt").setLevel(min(logging.getLogger().level, logging.INFO))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await start(nursery)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    logging.getLogger(logger).info("shutting down")
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def terminate_like_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM's handler outside ``run_stoppable``: do what SIGINT's handler
    does now (inside ``trio.run`` that is trio's, which interrupts at a safe
    point)."""
    global _stopped_by
    _stopped_by = signal.Signals(signum).name
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    if not _in_trio():  # SIGINT ignored (a background job): stop all the same
        raise KeyboardInterrupt
    # SIGINT ignored and trio running: trio has no safe point to offer, so end
    # as SIGTERM always did rather than raise inside its run loop.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _in_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True
