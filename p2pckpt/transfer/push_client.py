"""The pusher's side of a push: have other daemons pull a version from us.

``push_version`` serves the version itself for as long as it runs (a
temporary seeder), asks each target to pull it back (the target must grant
us the push role, follow the name, and we must let it pull), and waits for
each target's verified result. Each target is also told where the other
targets are (those reached directly), so they pull from each other as well
as from us: a swarm, not N copies of our uplink. The seeder's side is
``push_serve``. The caller dials the targets (``discovery.finder.connect_each``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from p2pckpt.config import Addr, Config, parse_addr
from p2pckpt.errors import P2pckptError, TransferError
from p2pckpt.home import Home
from p2pckpt.store.catalog import Entry
from p2pckpt.transfer.peer import PeerConnection
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m
from p2pckpt.wire.messages import MAX_PUSH_PEERS

PUSH_TIMEOUT: Final = 24 * 3600.0  # a target may be pulling a very large checkpoint

# (target label, bytes done, bytes total) as a target reports its pull
OnProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TargetResult:
    """What one target answered (or why it could not be asked)."""

    ok: bool
    message: str
    bytes: int = 0

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "message": self.message, "bytes": self.bytes}


@dataclass
class PushReport:
    """Every target's result (by the label it was given), and what we uploaded
    (targets also feed each other, so usually less than targets x size)."""

    name: str
    version: int
    total_bytes: int
    targets: dict[str, TargetResult] = field(default_factory=dict)
    bytes_served: int = 0

    @property
    def ok(self) -> bool:
        """Every target verified the version."""
        return all(r.ok for r in self.targets.values())


async def push_version(
    home: Home,
    config: Config,
    entry: Entry,
    targets: Sequence[tuple[str, PeerConnection | P2pckptError]],
    listen: Addr,
    on_progress: OnProgress | None = None,
    on_result: Callable[[str, TargetResult], None] | None = None,
) -> PushReport:
    """Serve ``entry`` on ``listen`` while every target pulls it from us;
    returns once each has answered or failed. ``targets``: each target's
    label and connection (this takes ownership), or why it could not be
    reached, which is its result. ``on_result`` hears each result as it comes."""
    report = PushReport(entry.name, entry.version, entry.total_bytes)
    served: list[int] = []

    def done(label: str, result: TargetResult) -> None:
        report.targets[label] = result
        if on_result is not None:
            on_result(label, result)

    server = Server.configured(home, config, on_served=served.append)
    conns: dict[str, PeerConnection] = {}
    for label, made in targets:
        if isinstance(made, PeerConnection):
            conns[label] = made
        else:
            done(label, TargetResult(False, str(made)))
    async with trio.open_nursery() as nursery:
        try:
            listeners = await nursery.start(server.serve, *listen)
        except BaseException:
            for conn in conns.values():
                await conn.aclose()
            raise
        port = listeners[0].socket.getsockname()[1]

        async def one(label: str, conn: PeerConnection) -> None:
            # The other targets, where we reached them: they pull from each other too.
            peers = tuple(
                (c.peer.key, *parse_addr(c.addr))
                for c in conns.values()
                if c.route == "direct" and c.peer != conn.peer
            )[:MAX_PUSH_PEERS]
            request = m.PushRequest(entry.name, entry.version, entry.root, port, peers)
            done(label, await _ask(conn, request, label, on_progress))

        async with trio.open_nursery() as pushes:
            for label, conn in conns.items():
                pushes.start_soon(one, label, conn)
        nursery.cancel_scope.cancel()
    report.bytes_served = sum(served)
    return report


async def _ask(
    conn: PeerConnection, request: m.PushRequest, label: str, on_progress: OnProgress | None
) -> TargetResult:
    """Send one target the PushRequest; its PushResult once it has pulled."""
    try:
        try:
            await conn.send(request)
            while isinstance(
                reply := await conn.receive(idle_timeout=PUSH_TIMEOUT), m.PushProgress
            ):
                if on_progress is not None:
                    on_progress(label, reply.done, reply.total)
        finally:
            await conn.aclose()
        if not isinstance(reply, m.PushResult):
            raise TransferError("unexpected answer to a push")
    except P2pckptError as exc:
        return TargetResult(False, str(exc))
    return TargetResult(reply.ok, reply.message, reply.bytes_total)
