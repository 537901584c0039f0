"""Who may wait for a handshake (pure; time is an argument).

Theory of operation
-------------------

Before a peer has proven a key it costs us a socket and a slot, nothing
more, and it must not be able to keep anyone else out (R-10, R-65). Two
pools hold the connections still in their handshake:

* **direct**: at most ``total``, and at most ``per_source`` from one source
  (an IPv4 address or IPv6 /64). A newcomer from a source at its cap is
  refused (the server answers "busy", so the client retries with backoff).
* **relayed**: sessions spliced by a relay all come from the relay's
  address, so they are not counted by source: each is its own unit, in a
  pool of ``relayed`` of their own, and a stranger with idle relayed
  sessions cannot use up the direct pool (or the other way round).

When a pool is full the *oldest* waiter is shed to admit the newcomer. An
honest client finishes its handshake in a few round trips, so whoever has
waited longest is almost always an idle attacker (as WireGuard favours
fresh initiations under load); an attacker would need to open a whole pool
of connections within one honest handshake to shed it. A ticket leaves
its pool when its handshake ends, however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

MAX_PREAUTH: Final = 64
MAX_PREAUTH_PER_SOURCE: Final = 8
MAX_PREAUTH_RELAYED: Final = 32


@dataclass(eq=False)
class Ticket:
    """One connection waiting for its handshake."""

    source: str | None  # None: a relayed session
    since: float
    shed: bool = False  # pushed out by a newcomer: the caller ends the connection


@dataclass
class PreAuth:
    """The two pools; ``enter`` admits, refuses or sheds, ``leave`` frees."""

    total: int = MAX_PREAUTH
    per_source: int = MAX_PREAUTH_PER_SOURCE
    relayed: int = MAX_PREAUTH_RELAYED
    _direct: list[Ticket] = field(default_factory=list)  # in arrival order
    _relayed: list[Ticket] = field(default_factory=list)

    def enter(self, source: str | None, now: float) -> tuple[Ticket | None, Ticket | None]:
        """(the newcomer's ticket, or None if refused; a ticket shed for it, or None)."""
        if source is None:
            pool, cap = self._relayed, self.relayed
        else:
            pool, cap = self._direct, self.total
            if sum(1 for t in pool if t.source == source) >= self.per_source:
                return None, None
        victim = None
        if len(pool) >= cap:
            victim = pool.pop(0)
            victim.shed = True
        ticket = Ticket(source, now)
        pool.append(ticket)
        return ticket, victim

    def leave(self, ticket: Ticket) -> None:
        pool = self._relayed if ticket.source is None else self._direct
        if ticket in pool:
            pool.remove(ticket)

    def waiting(self, source: str | None = None) -> int:
        """How many wait: in total, or from ``source`` (None: relayed)."""
        if source is None:
            return len(self._relayed)
        return sum(1 for t in self._direct if t.source == source)

    def __len__(self) -> int:
        return len(self._direct) + len(self._relayed)
