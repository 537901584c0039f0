"""A real puller (``over_stream``, ``pull``/``pull_offer``, the swarm) against a
real ``Server`` over trio memory streams, in virtual time: idle and stalled
seeders, a handshake that never completes, and a cancelled pull resumed.

Clock: pytest-trio's ``autojump_clock`` (a MockClock with autojump_threshold
0: whenever every task is blocked, time jumps to the next deadline). A task
waiting for a worker thread counts as blocked, so a thread hashing a chunk
would let the clock leap over a 60 s idle timeout in a few milliseconds of
real time. The ``inline_threads`` fixture therefore runs
``trio.to_thread.run_sync`` work in the trio thread (after the same
cancellation check, and with a schedule point after it, as the real one):
virtual time never moves while any work is running, so the tests are
deterministic whatever the machine's load. The hashing and writing are the
real ones; only the thread hop is gone (the e2e tests keep it).

A seeder "stops" the way a peer behind a network black hole does (a dead NAT
mapping, a pulled cable): once its connection is ``cut``, nothing more it
sends arrives, not even its close; what it was sent still reaches it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT
from p2pckpt.errors import HandshakeFailed, TransferError
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest
from p2pckpt.publish import publish
from p2pckpt.store.staging import staging_path
from p2pckpt.transfer.peer import IDLE_TIMEOUT, PeerConnection, over_stream
from p2pckpt.transfer.pull import PullResult, choose_source, pull, pull_offer
from p2pckpt.transfer.requests import STALL_RELEASE
from p2pckpt.transfer.serve import Server

CHUNK = 16 * 1024
CHUNKS = 24  # one file each: a chunk per file


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``trio.to_thread.run_sync`` without the thread (see the module docstring)."""

    async def run_sync(fn: Callable[..., Any], *args: Any, **_options: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)


@dataclass
class World:
    seeder: Home
    puller: Home
    manifest: Manifest
    source: Path
    dest: Path
    server: Server

    @property
    def total(self) -> int:
        return self.manifest.total_bytes


@pytest.fixture
def world(tmp_path: Path, inline_threads: None) -> World:
    seeder, _ = Home.init(tmp_path / "A")
    puller, _ = Home.init(tmp_path / "B")
    seeder.trust.add(puller.key.peer_id, "b", ["pull"])
    puller.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    source = tmp_path / "ckpt"
    source.mkdir()
    for i in range(CHUNKS):
        (source / f"part-{i:02d}.bin").write_bytes(os.urandom(CHUNK))
    manifest = publish(seeder, source, "m")
    assert manifest.chunk_count == CHUNKS
    return World(seeder, puller, manifest, source, tmp_path / "out" / "m", Server(seeder))


def second_holder(world: World, tmp_path: Path) -> tuple[Home, Path]:
    """C: a node that pulled the same version to its own copy, trusted both ways."""
    copy = tmp_path / "c-copy"
    shutil.copytree(world.source, copy)
    holder, _ = Home.init(tmp_path / "C")
    holder.trust.add(world.puller.key.peer_id, "b", ["pull"])
    world.puller.trust.add(holder.key.peer_id, "c", ["pull"])
    entry = world.seeder.catalog.by_root(world.manifest.root)
    assert entry is not None
    holder.catalog.add(world.manifest, entry.envelope, copy, "pulled")
    return holder, copy


class Wrapped(trio.abc.Stream):
    """A memory stream end that passes everything through; the test streams
    below change one thing each."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Hole(Wrapped):
    """The seeder's end of a memory connection; once ``cut`` is set, what it
    sends (its close included) never arrives."""

    def __init__(self, inner: trio.abc.Stream, cut: trio.Event) -> None:
        super().__init__(inner)
        self.cut = cut

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.cut.is_set():
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        if self.cut.is_set():
            await trio.lowlevel.checkpoint()
        else:
            await self.inner.aclose()


@dataclass
class Link:
    """Memory connections from the puller to the seeder's real ``Server``, each
    served by ``Server.handle`` in ``nursery``; a redial makes another one."""

    world: World
    nursery: trio.Nursery
    silent: bool = False  # connections made from now on are cut from the start
    cuts: list[trio.Event] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)  # when each server handler returned

    async def dial(self) -> PeerConnection:
        client, serving = trio.testing.memory_stream_pair()
        cut = trio.Event()
        if self.silent:
            cut.set()
        self.cuts.append(cut)
        self.nursery.start_soon(self._serve, Hole(serving, cut))
        w = self.world
        return await over_stream(
            w.puller, client, "memory", "direct", w.seeder.key.peer_id, self.dial, ""
        )

    async def _serve(self, stream: trio.abc.Stream) -> None:
        await self.world.server.handle(stream, via="memory")
        self.ended.append(trio.current_time())

    def cut_all(self) -> None:
        """The seeder goes silent on every connection, now and later."""
        self.silent = True
        for cut in self.cuts:
            cut.set()


@dataclass
class Counting:
    """A progress display that calls ``then`` once ``after`` chunks are written."""

    after: int
    then: Callable[[], None]
    chunks: int = 0
    bytes: int = 0
    at: float | None = None  # when ``then`` was called

    def start(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        self.chunks += 1
        self.bytes += n
        if self.chunks == self.after:
            self.at = trio.current_time()
            self.then()


@pytest.fixture
def pull_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, "p2pckpt")
    yield caplog


def idle_error(seconds: float, more: str = "") -> pytest.RaisesGroup[TransferError]:
    """The pull's error (in the nurseries' groups) for a peer silent ``seconds``."""
    text = re.escape(f"sent nothing for {seconds:.0f}s{more}")
    return pytest.RaisesGroup(pytest.RaisesExc(TransferError, match=text), flatten_subgroups=True)


async def resume(world: World, link: Link, pulled_before: int) -> PullResult:
    """Pull again over a fresh connection: only what is missing is downloaded."""
    conn = await link.dial()
    result = await pull(world.puller, [conn], "m", None, world.dest)
    assert result.bytes_reused == pulled_before > 0
    assert result.bytes_downloaded == world.total - pulled_before
    assert result.peers[0]["chunks"] == (world.total - pulled_before) // CHUNK
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()
    return result


async def test_an_idle_peer_is_given_up_after_the_idle_timeout(
    world: World, autojump_clock: trio.testing.MockClock, pull_log: pytest.LogCaptureFixture
) -> None:
    """A seeder that answers the manifest, then sends nothing more (not even a
    close), fails the pull IDLE_TIMEOUT after its Have was asked for, with
    the peer named and nothing committed."""
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery)
            offer = await choose_source(world.puller, [await link.dial()], "m", None)
            link.cut_all()
            started = trio.current_time()
            with idle_error(IDLE_TIMEOUT):
                await pull_offer(world.puller, offer, world.dest, streams=1)
            assert IDLE_TIMEOUT <= trio.current_time() - started < IDLE_TIMEOUT + 1
            nursery.cancel_scope.cancel()
    assert "source lost peer=" in pull_log.text
    assert "sent nothing for" in pull_log.text
    assert not world.dest.exists()


async def test_a_server_stalled_mid_transfer_is_given_up_and_the_pull_resumes(
    world: World, autojump_clock: trio.testing.MockClock, pull_log: pytest.LogCaptureFixture
) -> None:
    """A seeder that goes silent after a few chunks: the pull fails IDLE_TIMEOUT
    later saying the copy is resumable, and the next pull fetches only the rest."""
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery)
            progress = Counting(after=3, then=link.cut_all)
            conn = await link.dial()
            with idle_error(IDLE_TIMEOUT, "; a partial copy is kept: run the same command again"):
                await pull(world.puller, [conn], "m", None, world.dest, 1, progress)
            assert progress.at is not None
            assert IDLE_TIMEOUT <= trio.current_time() - progress.at < IDLE_TIMEOUT + 1
            assert 3 <= progress.chunks < CHUNKS  # those already on their way arrive
            link.silent = False  # the seeder is back
            await resume(world, link, progress.bytes)
            nursery.cancel_scope.cancel()
    assert "source lost peer=" in pull_log.text


async def test_a_stalled_connection_only_delays_its_own_chunks(
    world: World, autojump_clock: trio.testing.MockClock, pull_log: pytest.LogCaptureFixture
) -> None:
    """Of two connections to one seeder, one goes silent mid-transfer: its
    requests go to the other connection once it is given up (IDLE_TIMEOUT),
    and the pull completes, the source still counted as fine."""
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery)
            progress = Counting(after=4, then=lambda: link.cuts[0].set())
            conn = await link.dial()
            result = await pull(world.puller, [conn], "m", None, world.dest, 2, progress)
            assert progress.at is not None
            assert IDLE_TIMEOUT <= trio.current_time() - progress.at < IDLE_TIMEOUT + 1
            assert result.bytes_downloaded == world.total
            assert result.peers[0]["status"] == "ok"
            nursery.cancel_scope.cancel()
    assert "source lost" not in pull_log.text
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()


async def test_a_handshake_that_never_completes_times_out_on_both_sides(
    world: World, autojump_clock: trio.testing.MockClock, pull_log: pytest.LogCaptureFixture
) -> None:
    """The seeder's handshake reply never arrives: the puller gives up after
    HANDSHAKE_TIMEOUT, and so does the seeder (it never hears the last message)."""
    with trio.fail_after(10 * HANDSHAKE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery, silent=True)
            started = trio.current_time()
            with pytest.raises(HandshakeFailed, match="memory: handshake timed out"):
                await link.dial()
            assert trio.current_time() - started == pytest.approx(HANDSHAKE_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            assert [t - started for t in link.ended] == [pytest.approx(HANDSHAKE_TIMEOUT)]
    assert 'connection ended from=memory:0 error="handshake timed out"' in pull_log.text


async def test_a_cancelled_pull_leaves_a_journal_the_next_pull_resumes(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancelling a pull (two streams) mid-transfer commits nothing and keeps
    every chunk written so far; the next pull downloads only what is missing."""
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery)
            conn = await link.dial()
            with trio.CancelScope() as scope:
                progress = Counting(after=5, then=scope.cancel)
                await pull(world.puller, [conn], "m", None, world.dest, 2, progress)
            assert scope.cancelled_caught
            assert not world.dest.exists()
            assert (staging_path(world.dest) / "journal").exists()
            assert 5 <= progress.chunks < CHUNKS
            await resume(world, link, progress.bytes)
            nursery.cancel_scope.cancel()


async def test_a_writer_takes_what_is_waiting_even_from_a_closed_channel() -> None:
    """A connection that ends (a refusal, say) closes its writer's channel
    with chunks still queued: the writer takes them, it does not crash."""
    from p2pckpt.transfer.requests import Write
    from p2pckpt.transfer.swarm import waiting

    send, recv = trio.open_memory_channel[Write](8)
    writes = [Write(i, i, bytearray(10), 0) for i in range(3)]
    for w in writes:
        send.send_nowait(w)
    assert waiting(recv, 2) == writes[:2]  # at most ``most``
    assert waiting(recv, 2) == writes[2:]  # then what is left, without waiting
    assert waiting(recv, 2) == []  # empty and open
    send.send_nowait(writes[0])
    await send.aclose()
    assert waiting(recv, 5) == writes[:1]  # closed: what was queued, then nothing
    assert waiting(recv, 5) == []


async def test_a_banned_source_gives_back_the_room_it_held(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second source (C, holding the same version) sends a chunk that fails
    its hash and is banned while it has requests in flight: those requests'
    bytes leave the pull's Room (before, they stayed there and a pull could
    wait out its stall timeout with honest sources left)."""
    from p2pckpt.transfer import chunk_serve, swarm
    from p2pckpt.transfer.buffers import Room

    holder, copy = second_holder(world, tmp_path)
    real_read = chunk_serve.read_chunk

    def corrupt_at_c(path: Path, chunk: Any, req_id: int, buf: bytearray) -> memoryview:
        framed = real_read(path, chunk, req_id, buf)
        if copy in path.parents:
            framed[-1] ^= 0xFF  # after C's own check: the puller's check must catch it
        return framed

    monkeypatch.setattr(chunk_serve, "read_chunk", corrupt_at_c)
    rooms: list[Room] = []

    class Recorded(Room):
        def __init__(self) -> None:
            super().__init__()
            rooms.append(self)

    monkeypatch.setattr(swarm, "Room", Recorded)
    c_server = Server(holder)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            link = Link(world, nursery)

            async def dial_c() -> PeerConnection:
                client, serving = trio.testing.memory_stream_pair()
                nursery.start_soon(c_server.handle, serving, "memory")
                return await over_stream(
                    world.puller, client, "c", "direct", holder.key.peer_id, dial_c, ""
                )

            result = await pull(
                world.puller, [await dial_c(), await link.dial()], "m", None, world.dest
            )
            nursery.cancel_scope.cancel()
    by_id = {p["id"]: p for p in result.peers}
    assert by_id[str(holder.key.peer_id)]["status"] == "bad"
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()
    assert rooms and all(room.used == 0 for room in rooms), [r.used for r in rooms]


class Late(Wrapped):
    """A stream whose next send, once ``late`` is set, arrives that many
    seconds later (a LAN peer slower to answer its first Have than a relay)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.late = 0.0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        late, self.late = self.late, 0.0
        await trio.sleep(late)
        await self.inner.send_all(data)


async def test_the_relay_carries_nothing_a_direct_peer_slow_to_answer_holds(
    world: World, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The seeder, reached through a relay, answers its Have at once; C, a
    LAN peer holding the same version, half a second later: every chunk
    still comes from C (issue 17, item 3; CI once saw two chunks cross the
    relay because its Have won the race)."""
    holder, _ = second_holder(world, tmp_path)
    c_server = Server(holder)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            late: list[Late] = []

            async def dial_c() -> PeerConnection:
                client, serving = trio.testing.memory_stream_pair()
                late.append(Late(serving))
                nursery.start_soon(c_server.handle, late[-1], "memory")
                return await over_stream(
                    world.puller, client, "c", "direct", holder.key.peer_id, dial_c, ""
                )

            async def dial_relayed() -> PeerConnection:
                client, serving = trio.testing.memory_stream_pair()
                nursery.start_soon(world.server.handle, serving, "memory")
                w = world
                return await over_stream(
                    w.puller, client, "a", "relay", w.seeder.key.peer_id, dial_relayed, ""
                )

            c_conn = await dial_c()
            late[-1].late = 0.5  # its first answer after the handshake: the Have
            result = await pull(world.puller, [await dial_relayed(), c_conn], "m", None, world.dest)
            nursery.cancel_scope.cancel()
    by_id = {p["id"]: p for p in result.peers}
    assert by_id[str(world.seeder.key.peer_id)]["route"] == "relay"
    assert by_id[str(world.seeder.key.peer_id)]["bytes"] == 0, result.peers
    assert by_id[str(holder.key.peer_id)]["bytes"] == world.total
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()


async def test_a_wedged_second_source_gives_its_requests_back(
    world: World,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    pull_log: pytest.LogCaptureFixture,
) -> None:
    """C holds the version too, but goes silent once the first chunk is in (a
    wedged peer). The seeder, capped at a chunk a second, is busy for most
    of a minute, so C's requests would sit in the pull's room until the
    endgame or the idle timeout; after STALL_RELEASE they are cancelled and
    go to the seeder instead, and C stays a source (it was only quiet)."""
    holder, _ = second_holder(world, tmp_path)
    c_server, a_server = Server(holder), Server(world.seeder, upload=CHUNK)
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            cut = trio.Event()

            async def dial(server: Server, home: Home, label: str) -> PeerConnection:
                client, serving = trio.testing.memory_stream_pair()
                stream = Hole(serving, cut) if server is c_server else serving
                nursery.start_soon(server.handle, stream, "memory")
                peer = home.key.peer_id
                redial = partial(dial, server, home, label)
                return await over_stream(world.puller, client, label, "direct", peer, redial, "")

            conns = [await dial(c_server, holder, "c"), await dial(a_server, world.seeder, "a")]
            progress = Counting(after=1, then=cut.set)  # from then on, nothing from C arrives
            result = await pull(world.puller, conns, "m", None, world.dest, 1, progress)
            assert progress.at is not None
            assert trio.current_time() - progress.at > STALL_RELEASE  # long enough to tell
            nursery.cancel_scope.cancel()
    released = [r for r in pull_log.records if "quiet source" in r.getMessage()]
    assert released, "C's requests were never given back"
    by_id = {p["id"]: p for p in result.peers}
    assert by_id[str(holder.key.peer_id)]["status"] == "ok"  # quiet, not given up
    assert sum(p["bytes"] for p in result.peers) == world.total
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()


class Paused(Wrapped):
    """The seeder's end of a memory connection that reads no request while
    ``resume`` is set and not yet fired: a seeder too busy to get to them
    (it answers what it read before, and its sends never block)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.resume: trio.Event | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.resume is not None:
            await self.resume.wait()
        return await self.inner.receive_some(max_bytes)


async def test_a_source_quiet_for_a_while_is_asked_again_when_it_resumes(
    world: World, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The seeder goes quiet for 12 s (its requests go to C meanwhile), then
    resumes; then C goes silent for good. The seeder, still probed while it
    was quiet, is heard again and gives the rest, well within the idle
    timeout (review: a connection muted with nothing asked was never read
    again, and the pull failed on its stall timeout)."""
    holder, _ = second_holder(world, tmp_path)
    a_server, c_server = Server(world.seeder, upload=2 * CHUNK), Server(holder, upload=CHUNK // 4)
    with trio.fail_after(10 * IDLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            c_cut, a_streams = trio.Event(), []

            async def dial(server: Server, home: Home, label: str) -> PeerConnection:
                client, serving = trio.testing.memory_stream_pair()
                if server is a_server:
                    a_streams.append(Paused(serving))
                    stream: trio.abc.Stream = a_streams[-1]
                else:
                    stream = Hole(serving, c_cut)
                nursery.start_soon(server.handle, stream, "memory")
                peer = home.key.peer_id
                redial = partial(dial, server, home, label)
                return await over_stream(world.puller, client, label, "direct", peer, redial, "")

            async def script() -> None:
                resume = trio.Event()
                for s in a_streams:
                    s.resume = resume
                await trio.sleep(STALL_RELEASE + 2)
                resume.set()
                await trio.sleep(2)
                c_cut.set()

            conns = [await dial(a_server, world.seeder, "a"), await dial(c_server, holder, "c")]
            progress = Counting(after=1, then=lambda: nursery.start_soon(script))
            result = await pull(world.puller, conns, "m", None, world.dest, 1, progress)
            assert progress.at is not None
            assert trio.current_time() - progress.at < IDLE_TIMEOUT
            nursery.cancel_scope.cancel()
    assert sum(p["bytes"] for p in result.peers) == world.total
    for path in sorted(world.source.iterdir()):
        assert (world.dest / path.name).read_bytes() == path.read_bytes()
