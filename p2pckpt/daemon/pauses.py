"""Pausing a name's pulls in the daemon (``p2pckpt pause NAME``, the web page).

A pause cancels every pull of NAME the daemon runs under ``pulling(NAME)``
(a follow's, a push's, a pull started from the web page: only the part
that moves bytes, never a hook or a switch of ``current``) and makes new
ones stop at once, until ``resume(NAME)``; the pull then raises ``Paused``
and the follow waits for the resume before checking again. Cancelling a pull is its
ordinary stop path: it stops between chunks, the staging copy's journal is
flushed and the chunks verified so far stay in the partial copy, so the
pull that runs after ``resume`` fetches only what is missing (the same
resume as after a restart). Its transfer stays in ``status`` (marked
``paused``) with the bytes it had.

A pause lasts until ``resume`` or the daemon's end: a restarted daemon
pulls again. A push of a paused name is refused with ``Paused``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import trio

MAX_PAUSED: Final = 256  # names paused at once (a name is a followed one or a web pull's)


class Pauses:
    """Which names are paused, and the cancel scopes of their running pulls."""

    def __init__(self) -> None:
        self._paused: dict[str, trio.Event] = {}
        self._scopes: dict[str, set[trio.CancelScope]] = {}

    def paused(self, name: str) -> bool:
        return name in self._paused

    def names(self) -> list[str]:
        return sorted(self._paused)

    def pause(self, name: str) -> bool:
        """Stop NAME's pulls now and keep new ones from starting; False if
        it was paused already."""
        if name in self._paused:
            return False
        if len(self._paused) >= MAX_PAUSED:
            from p2pckpt.errors import ConfigError

            raise ConfigError(f"{MAX_PAUSED} names are paused already: resume one first")
        self._paused[name] = trio.Event()
        for scope in self._scopes.get(name, ()):
            scope.cancel()
        return True

    def resume(self, name: str) -> bool:
        """Let NAME's pulls run again; False if it was not paused."""
        event = self._paused.pop(name, None)
        if event is None:
            return False
        event.set()
        return True

    async def wait_resumed(self, name: str) -> None:
        """Return once NAME is not paused (at once if it is not)."""
        while (event := self._paused.get(name)) is not None:
            await event.wait()

    @contextlib.contextmanager
    def pulling(self, name: str, what: str) -> Iterator[None]:
        """Run a pull of NAME (``what``, for the error) in a scope that
        ``pause(NAME)`` cancels (at once if NAME is paused); a cancelled
        pull raises ``Paused``."""
        from p2pckpt.errors import Paused

        scope = trio.CancelScope()
        if name in self._paused:
            scope.cancel()
        scopes = self._scopes.setdefault(name, set())
        scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            scopes.discard(scope)
            if not scopes:
                del self._scopes[name]
        if scope.cancelled_caught:
            raise Paused(f"{what}: paused (the chunks verified so far are kept)")
