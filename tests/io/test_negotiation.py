"""Protocol version and feature negotiation over real sockets (issue 20).

The cross-release tests (tests/compat) run a real 0.1.0 against this code;
these check the exchange itself: two current nodes agree on their features,
a message type the server does not know is answered and the connection
lives on, and a server that hangs up on a Hello (what 0.1.0 does) is dialled
again without one and treated as 0.1.0.
"""

from __future__ import annotations

import struct
from functools import partial
from pathlib import Path

import trio

from p2pckpt.channel.stream import open_secure
from p2pckpt.errors import RemoteError
from p2pckpt.home import Home
from p2pckpt.transfer import peer as peer_module
from p2pckpt.transfer import releases
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.serve import Server
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import SERVER_ACCEPTS, MessageReader
from p2pckpt.wire.features import LEGACY, SERVER_FEATURES


def _homes(tmp_path: Path) -> tuple[Home, Home]:
    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    return seeder, puller


async def test_two_current_nodes_agree_on_every_feature(tmp_path: Path) -> None:
    seeder, puller = _homes(tmp_path)
    server = Server(seeder)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            conn = await connect_direct(puller, ("127.0.0.1", port), expect=seeder.key.peer_id)
            # every feature but ``gather``, which only a coordinator's listener names
            assert conn.features == SERVER_FEATURES and "hello" in conn.features
            assert conn.release and conn.release != "0.1.0"
            heard = releases.heard(seeder.key.peer_id)
            assert heard is not None and heard.protocol == 1 and heard.release == conn.release
            reply = await conn.request(m.ListRequest())
            assert isinstance(reply, m.ListResponse)
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_an_unknown_message_type_is_answered_and_the_connection_lives_on(
    tmp_path: Path,
) -> None:
    seeder, puller = _homes(tmp_path)
    server = Server(seeder)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listener.socket.getsockname()[1]
            conn = await connect_direct(puller, ("127.0.0.1", port), expect=seeder.key.peer_id)
            body = b"\x92\x01\xa1x"  # msgpack [1, "x"] of a type from the future
            await conn.secure.send_all(struct.pack(">BI", 77, len(body)) + body)
            try:
                await conn.receive()
                raise AssertionError("no answer to an unknown type")
            except RemoteError as exc:
                assert exc.code == m.UNSUPPORTED and "77" in str(exc)
            reply = await conn.request(m.ListRequest())  # still up, still answering
            assert isinstance(reply, m.ListResponse)
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_server_that_hangs_up_on_hello_is_dialled_again_as_0_1_0(tmp_path: Path) -> None:
    """What a 0.1.0 server does with a Hello (a type it does not know): it
    ends the connection. The client dials again without one, remembers the
    peer, and uses only the features 0.1.0 has."""
    seeder, puller = _homes(tmp_path)
    peer_module._legacy_until.clear()
    hellos = 0
    connections = 0

    async def old_server(tcp: trio.SocketStream) -> None:
        nonlocal hellos, connections
        connections += 1
        async with tcp:
            secure = await open_secure(tcp, seeder.key, initiator=False)
            reader = MessageReader(SERVER_ACCEPTS - {m_type_hello()})
            while data := await secure.receive_some():
                try:
                    msgs = reader.feed(data)
                except Exception:
                    hellos += 1
                    return  # 0.1.0: "unexpected message type", connection ends
                for msg in msgs:
                    if isinstance(msg, m.ListRequest):
                        from p2pckpt.wire.codec import encode

                        await secure.send_all(encode(m.ListResponse(())))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"), old_server, 0
            )
            port = listener.socket.getsockname()[1]
            conn = await connect_direct(puller, ("127.0.0.1", port), expect=seeder.key.peer_id)
            assert conn.features == LEGACY and conn.release == "0.1.0"
            heard = releases.heard(seeder.key.peer_id)
            assert heard is not None and heard.protocol is None and heard.release == "0.1.0"
            assert isinstance(await conn.request(m.ListRequest()), m.ListResponse)
            assert (hellos, connections) == (1, 2)
            again = await connect_direct(puller, ("127.0.0.1", port), expect=seeder.key.peer_id)
            assert again.features == LEGACY
            assert (hellos, connections) == (1, 3)  # remembered: no Hello the second time
            await conn.aclose()
            await again.aclose()
            nursery.cancel_scope.cancel()
    peer_module._legacy_until.clear()


def m_type_hello() -> int:
    from p2pckpt.wire.codec import encode

    return encode(m.Hello(1, "x", frozenset()))[0]
