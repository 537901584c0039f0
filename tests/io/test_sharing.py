"""A plain pull's sharing (``discovery.sharing``): whom it dials, what it serves.

The mDNS view is a real ``Browser`` fed records directly (the netns test
``tests/e2e/test_pull_sharing.py`` covers the wire); the server is a real
``Server`` on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pckpt.discovery import sharing as sharing_mod
from p2pckpt.discovery.mdns import Browser
from p2pckpt.discovery.sharing import Sharing
from p2pckpt.discovery.txt import Announcement
from p2pckpt.errors import NotFound
from p2pckpt.home import Home
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.publish import publish
from p2pckpt.transfer.fill import Hint
from p2pckpt.transfer.partials import Partials
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.pull import pull
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m

LOCAL = "127.0.0.1"


def _heard(browser: Browser, peer: PeerId, port: int, label: str) -> None:
    browser._apply(f"{label}._p2pckpt._tcp.local.", Announcement(peer, ((LOCAL, port),), 1, 1))


async def _found(share: Sharing, got: list[Hint], nursery: trio.Nursery) -> None:
    nursery.start_soon(share.found, got.append)
    await trio.testing.wait_all_tasks_blocked()


async def test_only_trusted_peers_are_reported_each_once_never_itself(tmp_path: Path) -> None:
    me, _ = Home.init(tmp_path / "me")
    friend, _ = Home.init(tmp_path / "friend")
    stranger, _ = Home.init(tmp_path / "stranger")
    later, _ = Home.init(tmp_path / "later")
    for name, home in (("friend", friend), ("later", later)):
        me.trust.add(home.key.peer_id, name, ["pull"])
    share = Sharing(me, browser=Browser(trio.lowlevel.current_trio_token()))
    assert share.browser is not None
    share.ready.set()
    got: list[Hint] = []
    async with trio.open_nursery() as nursery:
        _heard(share.browser, me.key.peer_id, 1, "me")  # our own announcement
        _heard(share.browser, stranger.key.peer_id, 2, "stranger")  # not trusted
        _heard(share.browser, friend.key.peer_id, 3, "friend")
        await _found(share, got, nursery)
        assert got == [(friend.key.peer_id, (LOCAL, 3))]
        _heard(share.browser, friend.key.peer_id, 3, "friend")  # heard again: not re-dialled
        _heard(share.browser, friend.key.peer_id, 4, "friend-2")  # a second address: tried too
        _heard(share.browser, later.key.peer_id, 5, "later")
        await trio.testing.wait_all_tasks_blocked()
        friend_id, later_id = friend.key.peer_id, later.key.peer_id
        assert sorted(got, key=str) == sorted(
            [(friend_id, (LOCAL, 3)), (friend_id, (LOCAL, 4)), (later_id, (LOCAL, 5))], key=str
        )
        nursery.cancel_scope.cancel()


async def test_a_lan_full_of_trusted_peers_gets_at_most_max_fellows_dials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing_mod, "MAX_FELLOWS", 2)
    me, _ = Home.init(tmp_path / "me")
    share = Sharing(me, browser=Browser(trio.lowlevel.current_trio_token()))
    assert share.browser is not None
    share.ready.set()
    for n in range(4):
        other, _ = Home.init(tmp_path / f"o{n}")
        me.trust.add(other.key.peer_id, f"o{n}", ["pull"])
        _heard(share.browser, other.key.peer_id, 10 + n, f"o{n}")
    got: list[Hint] = []
    with trio.fail_after(5):
        await share.found(got.append)  # returns: it has told all it may
    assert len(got) == 2


async def test_without_a_browser_nothing_is_found(tmp_path: Path) -> None:
    me, _ = Home.init(tmp_path / "me")
    share = Sharing(me)
    share.ready.set()  # mDNS failed to start: sharing reports nobody, and ends
    got: list[Hint] = []
    with trio.fail_after(5):
        await share.found(got.append)
    assert got == []


async def test_a_pulls_server_serves_nothing_of_its_catalog(tmp_path: Path) -> None:
    """A plain pull's server offers only the version it is pulling: a trusted
    peer asking it for a version in its home's catalog is told there is none."""
    node, _ = Home.init(tmp_path / "node")
    asker, _ = Home.init(tmp_path / "asker")
    node.trust.add(asker.key.peer_id, "asker", ["pull"])
    asker.trust.add(node.key.peer_id, "node", ["pull", "publish"])
    f = tmp_path / "private.bin"
    f.write_bytes(os.urandom(5000))
    root = publish(node, f, "private").root
    async with trio.open_nursery() as nursery:
        server = Server(node, partials=Partials(), catalog=False)
        (listener,) = await nursery.start(server.serve, LOCAL, 0)
        port = listener.socket.getsockname()[1]
        conn = await connect_direct(asker, (LOCAL, port), expect=node.key.peer_id)
        # Asked by its root, as a swarm source would be: not held, no chunk.
        assert await conn.request(m.HaveRequest(root)) == m.Have(root, False)
        answer = await conn.request(m.ChunkRequest(7, root, 0, 0))
        assert isinstance(answer, m.Error) and answer.code == m.NOT_FOUND
        assert (await conn.request(m.ListRequest())) == m.ListResponse(())
        with pytest.raises(NotFound):
            await pull(asker, [conn], "private", None, tmp_path / "got")
        assert not (tmp_path / "got").exists()
        nursery.cancel_scope.cancel()


async def test_when_mdns_cannot_start_the_pull_goes_on_without_sharing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A host without multicast: sharing logs why and ends, the pull is untouched
    (review: the nursery's error group escaped and cancelled the pull)."""
    from contextlib import asynccontextmanager

    from p2pckpt.config import Config
    from p2pckpt.discovery import mdns
    from p2pckpt.errors import DiscoveryError

    @asynccontextmanager
    async def broken(**_kw: object) -> AsyncIterator[Browser]:
        raise DiscoveryError("cannot start mDNS: no multicast here")
        yield  # pragma: no cover

    monkeypatch.setattr(mdns, "open_browser", broken)
    me, _ = Home.init(tmp_path / "me")
    got: list[Hint] = []
    async with sharing_mod.sharing(me, Config(mdns=True, listen=f"{LOCAL}:0")) as share:
        assert share is not None
        await trio.sleep(sharing_mod.SHARE_AFTER + 1)  # the pull goes on
        with trio.fail_after(1):
            await share.found(got.append)
    assert got == []
