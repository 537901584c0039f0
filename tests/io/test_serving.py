"""The seeder knows which versions connections are reading (retention spares them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pckpt.home import Home
from p2pckpt.publish import publish
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m


async def test_serving_tracks_open_connections(tmp_path: Path) -> None:
    """A version is "being served" while a connection that read it is open."""
    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(100_000))
    manifest = publish(seeder, f, "m")
    server = Server(seeder)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            conn = await connect_direct(puller, ("127.0.0.1", port), expect=seeder.key.peer_id)
            assert server.serving() == set()
            reply = await conn.request(m.ChunkRequest(0, manifest.root, 0))
            assert isinstance(reply, m.ChunkData)
            assert server.serving() == {manifest.root}
            for i in range(50):  # versions not served here are not counted, however many
                root = bytes([i]) * 32
                for req in (m.ChunkRequest(i, root, 0), m.PiecesRequest(i, root, 0)):
                    reply = await conn.request(req)
                    assert isinstance(reply, m.Error) and reply.code == m.NOT_FOUND
            assert server.serving() == {manifest.root}
            await conn.aclose()
            await trio.testing.wait_all_tasks_blocked()  # the server has seen the close
            assert server.serving() == set()
            nursery.cancel_scope.cancel()
    assert seeder.catalog.roots_under(f) == {manifest.root}
    assert seeder.catalog.roots_under(tmp_path / "elsewhere") == set()


async def test_trust_changes_reach_open_connections(tmp_path: Path, autojump_clock: object) -> None:
    """Over a memory stream (mock clock): each request needs its role as the
    trust file says *now*, and removing the peer from trust.json (as ``trust
    rm`` in another process does) closes its open connection within
    TRUST_RECHECK (R-63)."""
    from p2pckpt.errors import ChannelClosed, NotAuthorized
    from p2pckpt.identity.trust import TrustStore
    from p2pckpt.transfer.peer import PeerConnection, over_stream
    from p2pckpt.transfer.trust_watch import TRUST_RECHECK

    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    seeder.save_trust()
    puller.trust.add(seeder.key.peer_id, "a", ["publish"])
    server = Server(seeder)
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def no_redial() -> PeerConnection:
        raise AssertionError("not used")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.watch_trust)
            nursery.start_soon(server.handle, server_stream, "memory")
            conn = await over_stream(
                puller, client_stream, "memory", "direct", seeder.key.peer_id, no_redial, ""
            )
            assert isinstance(await conn.request(m.ListRequest()), m.ListResponse)
            other = TrustStore.load(seeder.path)  # another process edits the file
            other.add(puller.key.peer_id, "b", ["publish"])
            other.save(seeder.path)
            with pytest.raises(NotAuthorized, match="not with the 'pull' role"):
                await conn.request(m.ListRequest())
            other.remove(puller.key.peer_id)
            other.save(seeder.path)
            removed = trio.current_time()
            with pytest.raises(ChannelClosed):
                await conn.receive()
            assert trio.current_time() - removed <= 2 * TRUST_RECHECK
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_seeders_have_says_which_chunks_connected_pullers_were_given(
    tmp_path: Path,
) -> None:
    """A complete Have carries the chunks peers connected now were sent (never
    empty: one zero byte when none); requests it refused count for nothing,
    and a closed connection's chunks drop out."""
    seeder, _ = Home.init(tmp_path / "A")
    pullers = [Home.init(tmp_path / name)[0] for name in "BC"]
    for i, puller in enumerate(pullers):
        seeder.trust.add(puller.key.peer_id, f"p{i}", ["pull"])
        puller.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom((4 << 20) + 1000))  # two chunks
    manifest = publish(seeder, f, "m")
    server = Server(seeder)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            a, b = [
                await connect_direct(p, ("127.0.0.1", port), expect=seeder.key.peer_id)
                for p in pullers
            ]
            assert await b.request(m.HaveRequest(manifest.root)) == m.Have(
                manifest.root, True, b"\x00"
            )
            assert isinstance(await a.request(m.ChunkRequest(0, manifest.root, 1)), m.ChunkData)
            for bad in (
                m.ChunkRequest(1, manifest.root, 2),
                m.ChunkRequest(2, manifest.root, 1 << 31),
            ):
                reply = await a.request(bad)
                assert isinstance(reply, m.Error) and reply.code == m.BAD_REQUEST
            reply = await a.request(m.ChunkRequest(3, bytes(32), 0))
            assert isinstance(reply, m.Error) and reply.code == m.NOT_FOUND
            assert await b.request(m.HaveRequest(manifest.root)) == m.Have(
                manifest.root, True, b"\x02"
            )
            await a.aclose()
            await trio.testing.wait_all_tasks_blocked()  # the server has seen the close
            assert await b.request(m.HaveRequest(manifest.root)) == m.Have(
                manifest.root, True, b"\x00"
            )
            await b.aclose()
            nursery.cancel_scope.cancel()


async def _until(cond: Callable[[], bool]) -> None:
    """Poll a real condition (the caller bounds the time)."""
    while not cond():  # noqa: ASYNC110 -- server internals offer no event to wait on
        await trio.sleep(0.005)


async def test_every_chunk_buffer_returns_when_readers_die_mid_send(tmp_path: Path) -> None:
    """Ten connections that ask for chunks, never read and then drop (their
    responses queued and one half sent) give every server-wide chunk buffer
    back; a fresh puller is served at once (R-66, issue 14)."""
    from p2pckpt.transfer.leases import MAX_CHUNK_BUFFERS
    from p2pckpt.transfer.peer import PeerConnection, over_stream

    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["publish"])
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(300_000))
    manifest = publish(seeder, f, "m")
    server = Server(seeder)
    free = server._buffers._slots  # the budget under test

    async def no_redial() -> PeerConnection:
        raise AssertionError("not used")

    async def connect(nursery: trio.Nursery) -> PeerConnection:
        client, serving = trio.testing.lockstep_stream_pair()  # a send waits for a read
        nursery.start_soon(server.handle, serving, "memory")
        return await over_stream(
            puller, client, "memory", "direct", seeder.key.peer_id, no_redial, ""
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                conn = await connect(nursery)
                for req_id in range(m.MAX_OUTSTANDING):
                    await conn.send(m.ChunkRequest(req_id, manifest.root, 0))
                # blocked sending one, two queued, one more prepared
                await _until(lambda: free.value <= MAX_CHUNK_BUFFERS - 4)
                await conn.aclose()  # the reader dies
                await _until(lambda: free.value == MAX_CHUNK_BUFFERS)
            conn = await connect(nursery)
            reply = await conn.request(m.ChunkRequest(0, manifest.root, 0))
            assert isinstance(reply, m.ChunkData)
            await conn.aclose()
            await _until(lambda: free.value == MAX_CHUNK_BUFFERS)
            nursery.cancel_scope.cancel()


async def test_one_peer_that_never_reads_cannot_starve_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted peer with 8 connections of 64 requests each that never reads
    holds at most its share of the chunk buffers: another peer is served at
    once, and the hog's connections are dropped within seconds (R-65; the
    stall timeout shortened from 5 s to 1 s here)."""
    from p2pckpt.transfer import pipeline
    from p2pckpt.transfer.leases import MAX_CHUNK_BUFFERS, PEER_BUFFERS
    from p2pckpt.transfer.peer import PeerConnection, over_stream

    monkeypatch.setattr(pipeline, "STALL_SECONDS", 1.0)

    seeder, _ = Home.init(tmp_path / "A")
    hog, _ = Home.init(tmp_path / "H")
    honest, _ = Home.init(tmp_path / "B")
    for node in (hog, honest):
        seeder.trust.add(node.key.peer_id, "", ["pull"])
        node.trust.add(seeder.key.peer_id, "a", ["publish"])
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(300_000))
    manifest = publish(seeder, f, "m")
    server = Server(seeder)
    free = server._buffers._slots

    async def no_redial() -> PeerConnection:
        raise AssertionError("not used")

    async def connect(home: Home, nursery: trio.Nursery) -> PeerConnection:
        client, serving = trio.testing.lockstep_stream_pair()
        nursery.start_soon(server.handle, serving, "memory")
        return await over_stream(
            home, client, "memory", "direct", seeder.key.peer_id, no_redial, ""
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            hogs = [await connect(hog, nursery) for _ in range(8)]
            for conn in hogs:
                for req_id in range(m.MAX_OUTSTANDING):
                    await conn.send(m.ChunkRequest(req_id, manifest.root, 0))
            await _until(lambda: free.value == MAX_CHUNK_BUFFERS - PEER_BUFFERS)
            asked = trio.current_time()
            conn = await connect(honest, nursery)
            reply = await conn.request(m.ChunkRequest(0, manifest.root, 0))
            assert isinstance(reply, m.ChunkData)
            # Served while every hog connection is still open (not once some were dropped).
            assert len(server._shares[hog.key.peer_id].scopes) == len(hogs)
            assert free.value >= MAX_CHUNK_BUFFERS - PEER_BUFFERS - 4  # the hog got no more
            await _until(lambda: hog.key.peer_id not in server._shares)  # dropped as stalled
            assert trio.current_time() - asked < 3 * pipeline.STALL_SECONDS
            for c in [*hogs, conn]:
                await c.aclose()
            await _until(lambda: free.value == MAX_CHUNK_BUFFERS)
            nursery.cancel_scope.cancel()
