"""The seeder knows which versions connections are reading (retention spares them)."""

from __future__ import annotations

import os
from pathlib import Path

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
            await conn.aclose()
            await trio.testing.wait_all_tasks_blocked()  # the server has seen the close
            assert server.serving() == set()
            nursery.cancel_scope.cancel()
    assert seeder.catalog.roots_under(f) == {manifest.root}
    assert seeder.catalog.roots_under(tmp_path / "elsewhere") == set()
