"""Multi-host publish over real sockets, in process (issue 21 item 2): the
coordinator's listener against untrusted peers, garbage and clashing claims."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pckpt.errors import HostRefused, P2pckptError, TransferError
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.multihost import net
from p2pckpt.multihost.local import local_entries
from p2pckpt.transfer import peer as peer_module
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.wire import messages as m


def _node(base: Path, name: str, files: dict[str, bytes]) -> tuple[Home, Path]:
    home, _ = Home.init(base / name)
    data = base / f"data-{name}"
    for rel, body in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    return home, data


async def _coordinate(
    home: Home,
    data: Path,
    contributors: int,
    timeout: float,
    out: dict[str, Any],
    ready: trio.Event,
) -> None:
    root, mine = local_entries(home, data)

    def listening(listeners: list[trio.SocketListener]) -> None:
        out["port"] = listeners[0].socket.getsockname()[1]
        ready.set()

    try:
        out["manifest"] = await net.coordinate(
            home, root, mine, "n", 1, contributors, ("127.0.0.1", 0), timeout, None, None, listening
        )
    except P2pckptError as exc:
        out["error"] = exc
    ready.set()


async def test_an_untrusted_peer_is_dropped_and_garbage_fails_the_publish_by_name(
    tmp_path: Path,
) -> None:
    coord, cdata = _node(tmp_path, "c", {"c/x.bin": os.urandom(1000)})
    trusted, _ = _node(tmp_path, "a", {})
    stranger, sdata = _node(tmp_path, "u", {"u/x.bin": os.urandom(1000)})
    coord.trust.add(trusted.key.peer_id, "a", ["publish"])
    for h in (trusted, stranger):
        h.trust.add(coord.key.peer_id, "c", ["pull"])
    out: dict[str, Any] = {}
    ready = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_coordinate, coord, cdata, 1, 20.0, out, ready)
            await ready.wait()
            addr = ("127.0.0.1", out["port"])
            root, mine = local_entries(stranger, sdata)
            with pytest.raises(P2pckptError):  # dropped after the handshake
                await net.contribute(stranger, root, mine, "n", 1, addr, 10.0)
            assert "error" not in out and "manifest" not in out  # still waiting
            # (its hang-up looked like a 0.1.0 node's to this process: forget that)
            peer_module._legacy_until.clear()
            conn = await connect_direct(trusted, addr)
            await conn.send(m.GatherOffer("n", 1, b"\xc1 not msgpack"))
            reply = await conn.receive()
            await conn.aclose()
    assert isinstance(reply, m.GatherResult) and not reply.ok
    assert "host a (" in reply.message and "nothing was signed" in reply.message
    assert isinstance(out["error"], HostRefused) and out["error"].host.startswith("a (")
    assert coord.catalog.find("n", 1) is None


async def test_a_file_another_host_holds_is_refused_and_nothing_signed(tmp_path: Path) -> None:
    coord, cdata = _node(tmp_path, "c", {"shared/x.bin": os.urandom(1000)})
    other, odata = _node(tmp_path, "a", {"shared/x.bin": os.urandom(1000)})
    coord.trust.add(other.key.peer_id, "a", ["publish"])
    other.trust.add(coord.key.peer_id, "c", ["pull"])
    out: dict[str, Any] = {}
    ready = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_coordinate, coord, cdata, 1, 20.0, out, ready)
            await ready.wait()
            root, mine = local_entries(other, odata)
            with pytest.raises(TransferError, match="also claimed by"):
                await net.contribute(other, root, mine, "n", 1, ("127.0.0.1", out["port"]), 10.0)
    assert isinstance(out["error"], HostRefused)
    assert other.catalog.find("n", 1) is None and coord.catalog.find("n", 1) is None


async def test_two_hosts_make_one_version_each_serving_its_own_files(tmp_path: Path) -> None:
    coord, cdata = _node(tmp_path, "c", {"c/x.bin": os.urandom(5000)})
    other, odata = _node(tmp_path, "a", {"a/y.bin": os.urandom(7000)})
    coord.trust.add(other.key.peer_id, "a", ["publish"])
    other.trust.add(coord.key.peer_id, "c", ["pull"])
    out: dict[str, Any] = {}
    ready = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_coordinate, coord, cdata, 1, 20.0, out, ready)
            await ready.wait()
            root, mine = local_entries(other, odata)
            got = await net.contribute(other, root, mine, "n", 1, ("127.0.0.1", out["port"]), 10.0)
    made: Manifest = out["manifest"]
    assert got.root == made.root and [f.path for f in made.files] == ["a/y.bin", "c/x.bin"]
    for home, held in ((coord, "c/x.bin"), (other, "a/y.bin")):
        entry = home.catalog.find("n", 1, offered=True)
        assert entry is not None and entry.selected == frozenset({held})
        assert home.catalog.find("n", 1, whole=True) is None  # never offered as whole


async def test_nobody_coming_times_out_with_nothing_signed(tmp_path: Path) -> None:
    coord, cdata = _node(tmp_path, "c", {"c/x.bin": b"x"})
    out: dict[str, Any] = {}
    with trio.fail_after(30):
        await _coordinate(coord, cdata, 2, 0.3, out, trio.Event())
    assert isinstance(out["error"], TransferError)
    assert "0 of 2 contributors" in str(out["error"])
    assert coord.catalog.find("n", 1) is None
