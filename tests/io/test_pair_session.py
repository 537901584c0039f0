"""The pairing session over real loopback sockets, in one process (issue 19)."""

from __future__ import annotations

from pathlib import Path

import trio

from p2pckpt.home import Home
from p2pckpt.pairing.session import Invitation, direct, join
from p2pckpt.pairing.words import Code


async def test_a_joiner_tries_the_next_address_when_an_inviter_has_another_number(
    tmp_path: Path,
) -> None:
    """mDNS may list several inviters; one holding a code with another number
    refuses without spending anything, and the joiner goes on to the next."""
    other, _ = Home.init(tmp_path / "other")
    inviter, _ = Home.init(tmp_path / "inviter")
    joiner, _ = Home.init(tmp_path / "joiner")
    code = Code(7, ("orbit", "lantern", "velvet"))
    wrong_number = Invitation(other, Code(8, code.words), frozenset({"pull"}), "other")
    right = Invitation(inviter, code, frozenset({"pull"}), "nas")

    async def grant(*_: object) -> frozenset[str]:
        return frozenset({"publish"})

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            l1 = await trio.open_tcp_listeners(0, host="127.0.0.1")
            l2 = await trio.open_tcp_listeners(0, host="127.0.0.1")
            nursery.start_soon(wrong_number.serve, l1, 30)
            served = trio.Event()

            async def serve_right() -> None:
                await right.serve(l2, 30)
                served.set()

            nursery.start_soon(serve_right)
            ways = [direct("127.0.0.1", lst[0].socket.getsockname()[1]) for lst in (l1, l2)]
            outcome = await join(joiner, code, ways, "ws", "", grant)
            assert outcome.peer == inviter.key.peer_id
            await served.wait()  # the inviter pinned us and stopped by itself
            assert not wrong_number.claimed  # its code was never tried
            nursery.cancel_scope.cancel()
    assert joiner.trust.get(inviter.key.peer_id) is not None
    assert other.trust.get(joiner.key.peer_id) is None
