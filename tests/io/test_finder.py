"""Discovery cannot hide a peer (R-67): every address of a peer is dialled at
once, claims heard while dialling are dialled too, and a failure names every
route tried. Real sockets on 127.0.0.1 and a real server; the mDNS view is a
real ``Browser`` fed records directly (the netns tests cover the wire)."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT
from p2pckpt.config import Config, StaticPeer
from p2pckpt.discovery.finder import Finder
from p2pckpt.discovery.mdns import Browser
from p2pckpt.discovery.txt import Announcement
from p2pckpt.errors import PeerUnreachable
from p2pckpt.home import Home
from p2pckpt.publish import publish
from p2pckpt.transfer.serve import Server

LOCAL = "127.0.0.1"


async def _silent(nursery: trio.Nursery, close: bool = False) -> int:
    """A listener that accepts TCP and then says nothing (or hangs up)."""

    async def handler(stream: trio.SocketStream) -> None:
        if close:
            await stream.aclose()
            return
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


def _homes(tmp_path: Path) -> tuple[Home, Home]:
    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["publish"])
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(1000))
    publish(seeder, f, "m")
    return seeder, puller


async def test_a_silent_spoofed_address_does_not_hide_the_real_one(tmp_path: Path) -> None:
    """A liar announces A's ID at an address that accepts TCP and stays silent,
    listed first; the real address is dialled at the same time and wins well
    within one handshake deadline."""
    seeder, puller = _homes(tmp_path)
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(Server(seeder).serve, LOCAL, 0)
        real = listener.socket.getsockname()[1]
        fake = await _silent(nursery)
        browser = Browser(trio.lowlevel.current_trio_token())
        peer = seeder.key.peer_id
        browser._apply("a._p2pckpt._tcp.local.", Announcement(peer, ((LOCAL, real),), 1, 1))
        browser._apply("liar._p2pckpt._tcp.local.", Announcement(peer, ((LOCAL, fake),), 1, 1))
        assert browser.peers()[peer].addrs[0] == (LOCAL, fake)  # the liar comes first
        finder = Finder(puller, Config(mdns=True), browser)
        started = trio.current_time()
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            conn = await finder.connect(peer)
        assert conn.addr == f"{LOCAL}:{real}"
        assert trio.current_time() - started < HANDSHAKE_TIMEOUT / 2
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_a_claim_heard_while_dialling_is_dialled(tmp_path: Path) -> None:
    """Only the liar's silent address is known at first; the real announcement
    arrives mid-dial and is dialled at once, without waiting for the liar's
    handshake to time out."""
    seeder, puller = _homes(tmp_path)
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(Server(seeder).serve, LOCAL, 0)
        real = listener.socket.getsockname()[1]
        fake = await _silent(nursery)
        browser = Browser(trio.lowlevel.current_trio_token())
        peer = seeder.key.peer_id
        browser._apply("liar._p2pckpt._tcp.local.", Announcement(peer, ((LOCAL, fake),), 1, 1))
        finder = Finder(puller, Config(mdns=True), browser)
        result = []

        async def dial() -> None:
            result.append(await finder.connect(peer))

        with trio.fail_after(HANDSHAKE_TIMEOUT):
            async with trio.open_nursery() as dialling:
                dialling.start_soon(dial)
                await trio.testing.wait_all_tasks_blocked()  # the liar's dial is under way
                browser._apply("a._p2pckpt._tcp.local.", Announcement(peer, ((LOCAL, real),), 1, 1))
        (conn,) = result
        assert conn.addr == f"{LOCAL}:{real}"
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_the_error_names_every_route_tried(tmp_path: Path) -> None:
    """When every route fails, the error names each one, not only the first."""
    seeder, puller = _homes(tmp_path)
    async with trio.open_nursery() as nursery:
        hangup = await _silent(nursery, close=True)
        with trio.socket.socket() as probe:  # a port nobody listens on
            await probe.bind((LOCAL, 0))
            refused = probe.getsockname()[1]
        browser = Browser(trio.lowlevel.current_trio_token())
        peer = seeder.key.peer_id
        claims = ((LOCAL, hangup), (LOCAL, refused))
        browser._apply("a._p2pckpt._tcp.local.", Announcement(peer, claims, 1, 1))
        finder = Finder(puller, Config(mdns=True), browser)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            try:
                await finder.connect(peer)
            except PeerUnreachable as exc:
                message = str(exc)
            else:
                raise AssertionError("connected to nobody?")
        assert f"{LOCAL}:{hangup}" in message and f"{LOCAL}:{refused}" in message
        assert "(tried 2)" in message
        nursery.cancel_scope.cancel()


async def test_connect_all_names_each_target_it_could_not_reach(tmp_path: Path) -> None:
    """The targets that failed are named for a pull's error: a trusted peer
    by its name (also an address a static [[peer]] entry gives it), another
    address by itself, each with what failed; the ones that worked connect."""
    seeder, puller = _homes(tmp_path)
    stranger = Home.init(tmp_path / "C")[0].key.peer_id
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(Server(seeder).serve, LOCAL, 0)
        real = listener.socket.getsockname()[1]
        refused = []
        for _ in range(2):
            with trio.socket.socket() as probe:  # ports nobody listens on
                await probe.bind((LOCAL, 0))
                refused.append(probe.getsockname()[1])
        gone = (LOCAL, refused[0])
        static = (StaticPeer(seeder.key.peer_id, (gone,)), StaticPeer(stranger, ()))
        finder = Finder(puller, Config(mdns=False, peers=static))
        unreached: list[str] = []
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            conns = await finder.connect_all(
                [(LOCAL, real), gone, (LOCAL, refused[1]), stranger], unreached
            )
        assert [c.peer for c in conns] == [seeder.key.peer_id]
        assert sorted(unreached) == sorted(
            [
                f"a ({LOCAL}:{refused[0]}: connection refused)",
                f"{LOCAL}:{refused[1]}: connection refused",
                f"{stranger.short} (no address known)",
            ]
        )
        for conn in conns:
            await conn.aclose()
        nursery.cancel_scope.cancel()
