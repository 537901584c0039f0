"""The relay over real loopback sockets: registration, dialling, splicing, limits.

Every test is bounded by ``trio.fail_after``; addresses are 127.0.0.1, port 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from p2pckpt.channel.stream import open_secure
from p2pckpt.errors import HandshakeFailed, PeerUnreachable
from p2pckpt.identity.keys import NodeKey
from p2pckpt.identity.peer_id import PeerId
from p2pckpt.relay import protocol as p
from p2pckpt.relay import server as relay_server
from p2pckpt.relay import splice as relay_splice
from p2pckpt.relay.client import PrefixedStream, dial, open_relayed, register
from p2pckpt.relay.server import FrameStream, RelayServer

Addr = tuple[str, int]
LOCAL = "127.0.0.1"


async def start_relay(nursery: trio.Nursery, relay: RelayServer) -> Addr:
    listeners = await nursery.start(relay.serve, LOCAL, 0)
    return LOCAL, listeners[0].socket.getsockname()[1]


async def serve_fake(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> Addr:
    """A hand-written (possibly lying) relay on 127.0.0.1."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOCAL))
    return LOCAL, listeners[0].socket.getsockname()[1]


@pytest.fixture(params=["splice", "copy"] if relay_server.HAVE_SPLICE else ["copy"])
async def relay(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[tuple[RelayServer, Addr]]:
    """A relay on 127.0.0.1 (both byte movers where the OS has splice)."""
    server = RelayServer(use_splice=request.param == "splice")
    yield server, await start_relay(nursery, server)


async def echo(stream: trio.abc.Stream) -> None:
    """Echo until EOF, then half-close back."""
    while data := await stream.receive_some(1 << 16):
        await stream.send_all(data)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()


async def exchange(stream: trio.abc.Stream, payload: bytes) -> bytes:
    """Send ``payload`` then EOF while reading everything that comes back."""
    got = bytearray()

    async def send() -> None:
        for i in range(0, len(payload), 1 << 20):
            await stream.send_all(payload[i : i + (1 << 20)])
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while data := await stream.receive_some(1 << 18):
            got += data
    return bytes(got)


async def raw_register(addr: Addr, key: NodeKey, signer: NodeKey | None = None) -> FrameStream:
    """Register by hand (``signer`` forges the proof); returns the control connection."""
    conn = FrameStream(await trio.open_tcp_stream(*addr), p.NODE_ACCEPTS)
    await conn.send(p.Register(key.peer_id.key))
    challenge = await conn.receive(p.Challenge)
    assert isinstance(challenge, p.Challenge)
    proof = (signer or key).sign(p.proof_message(challenge.nonce, key.peer_id.key))
    await conn.send(p.Proof(proof))
    return conn


async def wait_closed(stream: trio.abc.Stream) -> None:
    """Read until the relay closes ``stream`` (a FIN, or a reset if we left data unread)."""
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(1 << 16):
            pass


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll relay statistics (they have no events to wait on)."""
    while not check():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_echo_20_mib_through_the_relay(
    relay: tuple[RelayServer, Addr], nursery: trio.Nursery
) -> None:
    """20 MiB go out and come back intact, with half-close passed through."""
    _, addr = relay
    node = NodeKey.generate()
    payload = os.urandom(20 << 20)
    with trio.fail_after(30):
        await nursery.start(register, addr, node, echo)
        stream = await dial(addr, node.peer_id)
        back = await exchange(stream, payload)
        await stream.aclose()
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


async def test_noise_runs_end_to_end(
    relay: tuple[RelayServer, Addr], nursery: trio.Nursery
) -> None:
    """The real handshake through the relay: each side proves its key to the other."""
    _, addr = relay
    node, client = NodeKey.generate(), NodeKey.generate()
    seen: list[PeerId] = []

    async def handle(stream: trio.abc.Stream) -> None:
        secure = await open_secure(stream, node, initiator=False)
        seen.append(secure.peer)
        await secure.send_all(b"hello " + bytes(await secure.receive_some()))

    with trio.fail_after(15):
        await nursery.start(register, addr, node, handle)
        secure = await open_secure(await dial(addr, node.peer_id), client, initiator=True)
        assert secure.peer == node.peer_id
        await secure.send_all(b"client")
        assert bytes(await secure.receive_some()) == b"hello client"
        await secure.aclose()
        secure = await open_relayed(addr, node.peer_id, client)
        await secure.send_all(b"again")
        assert bytes(await secure.receive_some()) == b"hello again"
        await secure.aclose()
    assert seen == [client.peer_id, client.peer_id]


async def test_a_relay_that_pairs_us_with_the_wrong_node_is_caught(nursery: trio.Nursery) -> None:
    """A malicious relay answers Connected for X but splices to Y: the handshake
    proves Y, so a caller that checks ``secure.peer`` (as ``open_relayed`` does,
    and as ``connect()`` must) refuses the session."""
    x, y, client = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()

    async def evil(stream: trio.SocketStream) -> None:
        conn = FrameStream(stream, p.RELAY_ACCEPTS)
        await conn.receive(p.Connect)
        await conn.send(p.Connected())
        secure = await open_secure(stream, y, initiator=False)  # Y, not X
        await secure.receive_some()

    addr = await serve_fake(nursery, evil)
    with trio.fail_after(15):
        secure = await open_secure(await dial(addr, x.peer_id), client, initiator=True)
        assert secure.peer == y.peer_id != x.peer_id
        await secure.aclose()
        with pytest.raises(HandshakeFailed, match="not"):
            await open_relayed(addr, x.peer_id, client)


async def test_bad_proof_is_refused(relay: tuple[RelayServer, Addr]) -> None:
    """A Register whose proof is signed by another key gets Refused and no registration."""
    server, addr = relay
    victim, attacker = NodeKey.generate(), NodeKey.generate()
    with trio.fail_after(10):
        conn = await raw_register(addr, victim, signer=attacker)
        assert await conn.receive(p.Refused, p.Registered) == p.Refused("bad proof")
        assert await conn.stream.receive_some(10) == b""
        await conn.aclose()
        assert server.statistics().registrations == 0
        with pytest.raises(PeerUnreachable, match="not registered"):
            await dial(addr, victim.peer_id)


async def test_dialling_an_unregistered_peer_fails_fast(relay: tuple[RelayServer, Addr]) -> None:
    """No such registration: PeerUnreachable well before the dial timeout."""
    _, addr = relay
    with trio.fail_after(2), pytest.raises(PeerUnreachable, match="not registered"):
        await dial(addr, NodeKey.generate().peer_id, timeout=10)


async def test_a_token_is_single_use(
    relay: tuple[RelayServer, Addr], nursery: trio.Nursery
) -> None:
    """The first Accept takes the session; the same token again, or a made-up one,
    is closed without a byte."""
    _, addr = relay
    node = NodeKey.generate()
    with trio.fail_after(15):
        control = await raw_register(addr, node)
        assert await control.receive(p.Registered) == p.Registered()
        dialled: list[trio.abc.Stream] = []

        async def dial_it() -> None:
            dialled.append(await dial(addr, node.peer_id))

        nursery.start_soon(dial_it)
        incoming = await control.receive(p.Incoming)
        assert isinstance(incoming, p.Incoming) and len(incoming.token) == p.TOKEN_SIZE
        first = await trio.open_tcp_stream(*addr)
        await first.send_all(p.encode(p.Accept(incoming.token)) + b"early bytes")
        await wait_until(lambda: bool(dialled))
        got = b""
        while len(got) < len(b"early bytes"):
            got += await dialled[0].receive_some()
        assert got == b"early bytes"  # sent with the Accept, forwarded first
        for token in (incoming.token, b"\x00" * 16):
            again = await trio.open_tcp_stream(*addr)
            await again.send_all(p.encode(p.Accept(token)))
            assert await again.receive_some(10) == b""
            await again.aclose()
        await dialled[0].send_all(b"still spliced")
        assert await first.receive_some(100) == b"still spliced"
        for s in (first, dialled[0], control):
            await s.aclose()


async def test_bytes_pipelined_after_connect_are_forwarded_first(
    relay: tuple[RelayServer, Addr], nursery: trio.Nursery
) -> None:
    """A client that sends data in the same packet as Connect loses nothing."""
    _, addr = relay
    node = NodeKey.generate()
    with trio.fail_after(15):
        await nursery.start(register, addr, node, echo)
        conn = FrameStream(await trio.open_tcp_stream(*addr), p.CLIENT_ACCEPTS)
        await conn.stream.send_all(p.encode(p.Connect(node.peer_id.key)) + b"pipelined")
        await conn.stream.send_eof()
        assert await conn.receive(p.Connected) == p.Connected()
        back = conn.leftover()
        while data := await conn.stream.receive_some(100):
            back += data
        assert back == b"pipelined"
        await conn.aclose()


async def test_dial_keeps_bytes_that_came_with_connected(nursery: trio.Nursery) -> None:
    """If the peer's first bytes arrive with Connected, dial returns them first
    (through a stream without ``.socket``, so nobody can read around them)."""

    async def fake_relay(stream: trio.SocketStream) -> None:
        await FrameStream(stream, p.RELAY_ACCEPTS).receive(p.Connect)
        await stream.send_all(p.encode(p.Connected()) + b"greeting")
        await stream.send_all(b" and more")
        await stream.send_eof()

    addr = await serve_fake(nursery, fake_relay)
    with trio.fail_after(10):
        stream = await dial(addr, NodeKey.generate().peer_id)
        assert isinstance(stream, PrefixedStream) and not hasattr(stream, "socket")
        got = b""
        while data := await stream.receive_some(3):
            got += data
        assert got == b"greeting and more"
        await stream.aclose()


@pytest.mark.parametrize(
    "junk",
    [b"", b"\x00\x10half a fr", b"\xff\xff", b"GET / HTTP/1.1\r\n\r\n", b"\x00\x01\x01"],
    ids=["silent", "half-frame", "oversize", "http", "garbage"],
)
async def test_junk_ends_only_that_connection(
    junk: bytes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage, oversize frames and half-open connections are closed (silent ones
    after the first-frame deadline) while the relay keeps relaying."""
    monkeypatch.setattr(relay_server, "FIRST_FRAME_TIMEOUT", 0.5)
    server = RelayServer()
    addr = await start_relay(nursery, server)
    node = NodeKey.generate()
    with trio.fail_after(15):
        await nursery.start(register, addr, node, echo)
        bad = await trio.open_tcp_stream(*addr)
        await bad.send_all(junk)
        stream = await dial(addr, node.peer_id)
        assert await exchange(stream, b"ping") == b"ping"
        await stream.aclose()
        with trio.fail_after(3):
            await wait_closed(bad)
        await bad.aclose()
        await wait_until(lambda: server.statistics().connections == 1)  # the node's control


async def test_registering_again_replaces_the_old_registration(
    relay: tuple[RelayServer, Addr], nursery: trio.Nursery
) -> None:
    """A second proven registration of the same key closes the first; dials reach the new one."""
    server, addr = relay
    node = NodeKey.generate()
    with trio.fail_after(15):
        old = await raw_register(addr, node)
        assert await old.receive(p.Registered) == p.Registered()
        # A bare Register (no proof) does not knock the old one off.
        intruder = FrameStream(await trio.open_tcp_stream(*addr), p.NODE_ACCEPTS)
        await intruder.send(p.Register(node.peer_id.key))
        await intruder.receive(p.Challenge)
        await nursery.start(register, addr, node, echo)
        assert await old.stream.receive_some(100) == b""  # closed by the relay
        assert server.statistics().registrations == 1
        stream = await dial(addr, node.peer_id)
        assert await exchange(stream, b"new one") == b"new one"
        for s in (stream, old, intruder):
            await s.aclose()


async def test_per_source_rate_limit_drops_a_flood(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Beyond the burst, connections from one source are closed unanswered; the
    relay answers again once the bucket refills. The clock stands still (the
    relay's bucket reads trio's clock) until the test moves it by exactly one
    connection's worth of refill; pytest's timeout bounds the test."""
    server = RelayServer(connect_rate=2.0, connect_burst=5.0)
    addr = await start_relay(nursery, server)
    stranger = p.Connect(NodeKey.generate().peer_id.key)
    answered = dropped = 0
    streams = []
    for _ in range(30):
        s = await trio.open_tcp_stream(*addr)
        streams.append(s)
        with contextlib.suppress(trio.BrokenResourceError):
            await s.send_all(p.encode(stranger))
    for s in streams:
        try:
            reply = await s.receive_some(100)
        except trio.BrokenResourceError:
            reply = b""
        if reply:
            answered += 1
        else:
            dropped += 1
        await s.aclose()
    assert (answered, dropped) == (5, 25)  # the burst, then nothing: no time passed
    with pytest.raises(PeerUnreachable, match="dropped us"):  # still empty
        await dial(addr, PeerId(stranger.target_key))
    mock_clock.jump(1 / 2.0)  # one token at connect_rate
    with pytest.raises(PeerUnreachable, match="not registered"):
        await dial(addr, PeerId(stranger.target_key))


async def test_keepalive_and_idle_timeout(nursery: trio.Nursery) -> None:
    """The relay pings; register() answers and stays registered; a node that
    stops answering is dropped after the idle timeout."""
    server = RelayServer(ping_interval=0.1, idle_timeout=0.5)
    addr = await start_relay(nursery, server)
    live, mute, later = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    with trio.fail_after(15):
        await nursery.start(register, addr, live, echo)
        conn = await raw_register(addr, mute)
        assert await conn.receive(p.Registered) == p.Registered()
        assert await conn.receive(p.Ping) == p.Ping()
        await conn.send(p.Ping())
        assert await conn.receive(p.Pong, p.Ping) in (p.Pong(), p.Ping())
        with trio.fail_after(3):  # now silent: closed
            await wait_closed(conn.stream)
        await conn.aclose()
        # Outlast another idle timeout, as the relay's own clock counts it: a
        # node registered now and silent is dropped only once it has passed.
        # The live node must still be registered then (it answers the pings).
        silent = await raw_register(addr, later)
        assert await silent.receive(p.Registered) == p.Registered()
        with trio.fail_after(3):
            await wait_closed(silent.stream)
        await silent.aclose()
        assert server.statistics().registrations == 1
        stream = await dial(addr, live.peer_id)
        assert await exchange(stream, b"alive") == b"alive"
        await stream.aclose()


async def test_node_reconnects_after_the_relay_restarts() -> None:
    """register() survives losing the relay: it comes back within the backoff."""
    node = NodeKey.generate()
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as first_run:
                async with trio.open_nursery() as relay_nursery:
                    addr = await start_relay(relay_nursery, RelayServer())
                    await outer.start(register, addr, node, echo)
                    first_run.cancel()
            server = RelayServer()
            listeners = await outer.start(server.serve, addr[0], addr[1])
            assert listeners[0].socket.getsockname()[1] == addr[1]
            await wait_until(lambda: server.statistics().registrations == 1)
            stream = await dial(addr, node.peer_id)
            assert await exchange(stream, b"back") == b"back"
            await stream.aclose()
            outer.cancel_scope.cancel()


async def test_session_caps(nursery: trio.Nursery) -> None:
    """A bandwidth cap slows a session down; a byte cap ends it."""
    slow = RelayServer(bandwidth=1 << 20)
    capped = RelayServer(session_bytes=100_000)
    node = NodeKey.generate()
    with trio.fail_after(20):
        for server, check in ((slow, _slow), (capped, _capped)):
            addr = await start_relay(nursery, server)
            await nursery.start(register, addr, node, echo)
            await check(await dial(addr, node.peer_id))


async def _slow(stream: trio.abc.Stream) -> None:
    start = trio.current_time()
    assert await exchange(stream, bytes(1 << 20)) == bytes(1 << 20)  # 2 MiB moved at 1 MiB/s
    assert trio.current_time() - start > 1.0
    await stream.aclose()


async def _capped(stream: trio.abc.Stream) -> None:
    back = 0

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the relay cut us off
            await stream.send_all(bytes(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(1 << 16):
                back += len(data)
    assert back < 100_000
    await stream.aclose()


async def test_an_unanswered_token_expires(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that does not Accept in time: the client is refused, the late Accept closed."""
    monkeypatch.setattr(p, "TOKEN_TTL", 0.3)
    server = RelayServer()
    addr = await start_relay(nursery, server)
    node = NodeKey.generate()
    with trio.fail_after(10):
        control = await raw_register(addr, node)
        await control.receive(p.Registered)
        with pytest.raises(PeerUnreachable, match="did not answer"):
            await dial(addr, node.peer_id)
        incoming = await control.receive(p.Incoming)
        assert isinstance(incoming, p.Incoming)
        late = await trio.open_tcp_stream(*addr)
        await late.send_all(p.encode(p.Accept(incoming.token)))
        await wait_closed(late)
        assert server.statistics().pending_tokens == 0
        for s in (late, control):
            await s.aclose()


async def test_one_node_cannot_take_every_pending_token(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connects waiting for one silent node are capped; the next gets "peer busy" at once."""
    monkeypatch.setattr(relay_server, "MAX_SESSIONS_PER_REQUESTER", 1000)  # all from 127.0.0.1
    server = RelayServer(connect_burst=100)
    addr = await start_relay(nursery, server)
    node = NodeKey.generate()
    with trio.fail_after(10):
        control = await raw_register(addr, node)
        await control.receive(p.Registered)
        async with trio.open_nursery() as waiting:
            for _ in range(relay_server.MAX_PENDING_PER_NODE):
                waiting.start_soon(dial, addr, node.peer_id)
            await wait_until(
                lambda: server.statistics().pending_tokens == relay_server.MAX_PENDING_PER_NODE
            )
            with trio.fail_after(2), pytest.raises(PeerUnreachable, match="peer busy"):
                await dial(addr, node.peer_id)
            waiting.cancel_scope.cancel()
        await control.aclose()


async def test_tiny_pipes_fall_back_to_copying(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the pipe quota (simulated) a session copies instead, and loses nothing."""
    monkeypatch.setattr(relay_splice, "MIN_PIPE_SIZE", 1 << 40)
    addr = await start_relay(nursery, RelayServer())
    node = NodeKey.generate()
    payload = os.urandom(3 << 20)
    with trio.fail_after(15):
        await nursery.start(register, addr, node, echo)
        stream = await dial(addr, node.peer_id)
        assert await exchange(stream, payload) == payload
        await stream.aclose()


async def test_one_requester_cannot_hold_every_session_to_a_node(nursery: trio.Nursery) -> None:
    """A stranger who knows a node's public ID gets at most
    MAX_SESSIONS_PER_REQUESTER Connects to it (waiting or spliced); the next is
    refused at once, and a requester from another address still gets through."""
    server = RelayServer(connect_burst=100)
    addr = await start_relay(nursery, server)
    node = NodeKey.generate()
    cap = relay_server.MAX_SESSIONS_PER_REQUESTER
    with trio.fail_after(10):
        control = await raw_register(addr, node)
        await control.receive(p.Registered)
        async with trio.open_nursery() as waiting:
            for _ in range(cap):  # the node never answers: they all wait
                waiting.start_soon(dial, addr, node.peer_id)
            await wait_until(lambda: server.statistics().pending_tokens == cap)
            with trio.fail_after(2), pytest.raises(PeerUnreachable, match="too many sessions"):
                await dial(addr, node.peer_id)
            other = trio.socket.socket()
            await other.bind(("127.0.0.2", 0))
            await other.connect(addr)
            stream = trio.SocketStream(other)
            await stream.send_all(p.encode(p.Connect(node.peer_id.key)))
            await wait_until(lambda: server.statistics().pending_tokens == cap + 1)
            await stream.aclose()
            waiting.cancel_scope.cancel()
        await control.aclose()
