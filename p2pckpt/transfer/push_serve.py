"""The seeder's side of a push: a peer asks us to pull a version back from it.

The pull itself is the daemon's (``PushHandler``, e.g. ``daemon.app``'s
``on_push``); this module checks the pusher's "push" role against the trust
store as it is now (R-63), reports progress while the pull runs (a
PushProgress about every PUSH_PROGRESS_INTERVAL, only when it moved) and
answers with the PushResult, or with one Error. A node without a handler
(``p2pckpt serve``, ``p2pckpt push``) takes no pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from p2pckpt.errors import TrustError
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.manifest.paths import safe_display
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import encode

log = logging.getLogger("p2pckpt.serve")

# (pusher, the address its connection came from or None if relayed, request,
#  report(bytes done, bytes total) for progress)
PushHandler = Callable[
    [PeerId, tuple[str, int] | None, m.PushRequest, Callable[[int, int], None]],
    Awaitable[m.PushResult],
]


async def serve_push(
    home: Home,
    on_push: PushHandler | None,
    peer: PeerId,
    hint: tuple[str, int] | None,
    req: m.PushRequest,
    send: Callable[[bytes], Awaitable[None]],
) -> None:
    """Answer one PushRequest from ``peer`` through ``send`` (encoded messages,
    in order). ``hint`` is the host the connection came from (port ignored:
    the pusher names its own), None if relayed.

    Cancelling it cancels the pull under way (the handler's to clean up).
    """
    if on_push is None:
        error = m.Error(m.BAD_REQUEST, "this node takes no pushes (run 'p2pckpt daemon')")
        await send(encode(error))
        return
    try:
        home.trust.require(peer, "push")
    except TrustError:
        log.warning(
            'refused push name="%s" version=%d from=%s (no push role)',
            safe_display(req.name),
            req.version,
            peer.short,
        )
        await send(encode(m.Error(m.UNAUTHORIZED, "you do not have the 'push' role here")))
        return
    target = (hint[0], req.port) if hint is not None else None
    latest: list[int] = []

    def report(done: int, total: int) -> None:
        latest[:] = [done, total]

    async def ticker() -> None:
        sent: list[int] = []
        while True:
            await trio.sleep(m.PUSH_PROGRESS_INTERVAL)
            if latest != sent:
                sent = list(latest)
                await send(encode(m.PushProgress(*sent)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await on_push(peer, target, req, report)
        nursery.cancel_scope.cancel()
    await send(encode(result))
