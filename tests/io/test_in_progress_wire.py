"""Streaming publish (issue 21) over real sockets on 127.0.0.1: a seeder's
server answers with tampered in-progress manifests, and a follower's real
follow loop refuses each one: nothing is fetched or committed, ``current``
never appears, and the loop keeps running: a genuine in-progress manifest
is then prefetched, and when the finished version does not cover what it
promised (the shard was written again), the finished one is what is
installed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio

from p2pckpt.config import Config, FollowSpec, StaticPeer
from p2pckpt.daemon import follow as follow_mod
from p2pckpt.daemon.follow import FollowState, follow
from p2pckpt.discovery.finder import Finder
from p2pckpt.home import Home
from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.manifest import IN_PROGRESS_KEY, Manifest, sign
from p2pckpt.publish import publish, publish_in_progress
from p2pckpt.transfer.choose import PROGRESS_WAIT, await_progress
from p2pckpt.transfer.peer import connect_direct
from p2pckpt.transfer.progress_book import ProgressBook
from p2pckpt.transfer.pull import NoProgress
from p2pckpt.transfer.serve import Server

LOCAL = "127.0.0.1"


def _homes(tmp_path: Path) -> tuple[Home, Home, Path]:
    seeder, _ = Home.init(tmp_path / "A")
    follower, _ = Home.init(tmp_path / "B")
    seeder.trust.add(follower.key.peer_id, "b", ["pull"])
    follower.trust.add(seeder.key.peer_id, "a", ["pull", "publish"])
    step = tmp_path / "ckpts" / "step-3"
    step.mkdir(parents=True)
    (step / "model-00001-of-00002.safetensors").write_bytes(os.urandom(5000))
    (step / "model-00002-of-00002.safetensors").write_bytes(os.urandom(3000))
    return seeder, follower, step


def _flip_last(envelope: bytes) -> bytes:
    return envelope[:-1] + bytes([envelope[-1] ^ 1])


async def _serve_and_follow(
    nursery: trio.Nursery, seeder: Home, book: ProgressBook, follower: Home, state: FollowState
) -> None:
    """The seeder's real server on loopback (offering ``book``), and the
    follower's real follow loop of ``state.spec`` with it as its one peer."""
    (listener,) = await nursery.start(Server(seeder, progress=book).serve, LOCAL, 0)
    port = listener.socket.getsockname()[1]
    config = Config(mdns=False, peers=(StaticPeer(seeder.key.peer_id, ((LOCAL, port),)),))
    finder = Finder(follower, config)
    nursery.start_soon(
        lambda: follow(follower, finder, state.spec, lambda _n: NoProgress(), state=state)
    )


async def _until(cond, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 -- a log line or a file: no event to wait on
            await trio.sleep(0.02)


async def test_tampered_in_progress_manifests_are_refused_and_the_follower_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    # A refused answer wakes no one (the long poll checks its signature): polls find it.
    monkeypatch.setattr(follow_mod, "POLL_SECONDS", 0.2)
    seeder, follower, step = _homes(tmp_path)
    shard = "model-00001-of-00002.safetensors"
    genuine, envelope = publish_in_progress(seeder, step, "m", 3, frozenset({shard}), 7)
    stranger = NodeKey.generate()  # signs well, but nobody trusts it to publish
    _, foreign_env = sign(
        Manifest("m", 3, stranger.peer_id, genuine.created, genuine.meta, "dir", genuine.files),
        stranger,
    )
    book = ProgressBook()
    models = tmp_path / "models"
    spec = FollowSpec("m", models)
    state = FollowState(spec)
    refusals = 0

    def refused() -> int:
        return sum("in-progress refused" in r.getMessage() for r in caplog.records)

    async with trio.open_nursery() as nursery:
        await _serve_and_follow(nursery, seeder, book, follower, state)
        # a bad signature; a publisher nobody trusts
        for sequence, env in enumerate([_flip_last(envelope), foreign_env], start=8):
            # a new sequence each time: the follower's long poll wakes it at once
            book.offer(_resequenced(seeder, genuine, sequence), env, step)
            await _until(partial(_more, refused, refusals), f"refusal {refusals + 1}")
            refusals = refused()
        # A finished manifest presented as an in-progress one: refused too.
        finished = publish(seeder, step, "m", 3)
        entry = seeder.catalog.find("m", 3)
        assert entry is not None
        seeder.catalog.retire(finished.root)  # not offered as a version: only as "in progress"
        book.offer(_resequenced(seeder, genuine, 20), entry.envelope, step)
        await _until(partial(_more, refused, refusals), "the finished one refused as in progress")
        # Nothing was fetched, staged or committed; the loop still runs.
        assert not models.exists() or not any(models.rglob("*.safetensors"))
        assert not (models / "m" / "current").exists()
        # An in-progress manifest presented as the finished version: refused.
        ip, ip_env = publish_in_progress(seeder, step, "m", 4, frozenset({shard}), 30)
        seeder.catalog.add(ip, ip_env, step, "published")
        book.withdraw("m")
        await _until(
            lambda: any(
                "follow check" in r.getMessage() and "in-progress" in r.getMessage()
                for r in caplog.records
            ),
            "the in-progress one refused as a version",
        )
        assert not (models / "m" / "current").exists()
        # The same loop goes on: a genuine in-progress manifest is prefetched;
        # then the trainer rewrites that shard, and the finished manifest
        # does not cover what was prefetched: it decides, the rest is dropped.
        seeder.catalog.retire(ip.root)
        book.offer(*publish_in_progress(seeder, step, "m", 5, frozenset({shard}), 40), step)
        await _until(
            lambda: any("prefetched name=m version=5" in r.getMessage() for r in caplog.records),
            "the genuine in-progress manifest prefetched",
        )
        assert not (models / "m" / "current").exists()
        rewritten = os.urandom(5000)
        (step / shard).write_bytes(rewritten)
        publish(seeder, step, "m", 5)
        book.retire("m", step)
        await _until(lambda: (models / "m" / "current").is_symlink(), "current -> 5")
        assert os.readlink(models / "m" / "current") == "5"
        assert (models / "m" / "5" / shard).read_bytes() == rewritten
        nursery.cancel_scope.cancel()


def _more(count: Callable[[], int], than: int) -> bool:
    return count() > than


def _resequenced(home: Home, manifest: Manifest, sequence: int) -> Manifest:
    """``manifest`` under another in-progress sequence: what the seeder's book
    keys its offer on (the envelope sent is whatever the test gives it)."""
    meta = {**manifest.meta, IN_PROGRESS_KEY: str(sequence)}
    return sign(replace(manifest, meta=meta), home.key)[0]


async def test_the_long_poll_is_answered_when_the_offer_changes_and_only_then(
    tmp_path: Path,
) -> None:
    """ProgressRequest with ``after`` (feature progress-wait) is held while
    the offer is ``after``, answered at once when it changes (a new offer;
    the version published whole), and held by a server with no book."""
    seeder, follower, step = _homes(tmp_path)
    shard = "model-00001-of-00002.safetensors"
    book = ProgressBook()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ports = []
            for server in (Server(seeder, progress=book), Server(seeder)):
                (listener,) = await nursery.start(server.serve, LOCAL, 0)
                ports.append(listener.socket.getsockname()[1])
            conn = await connect_direct(follower, (LOCAL, ports[0]), expect=seeder.key.peer_id)
            assert PROGRESS_WAIT in conn.features
            async with trio.open_nursery() as inner:
                answers: list[int] = []

                async def ask(after: int) -> None:
                    answers.append(await await_progress(conn, "m", after, 10.0))

                inner.start_soon(ask, 0)
                await trio.sleep(0.3)
                assert answers == []  # nothing offered: held
                book.offer(*publish_in_progress(seeder, step, "m", 3, frozenset({shard}), 7), step)
            assert answers == [7]
            assert await await_progress(conn, "m", 6, 10.0) == 7  # not what it had: at once
            with trio.move_on_after(0.3) as held:
                await await_progress(conn, "m", 7, 10.0)
            assert held.cancelled_caught  # what it had: held
            await conn.aclose()
            conn = await connect_direct(follower, (LOCAL, ports[0]), expect=seeder.key.peer_id)
            book.retire("m", step)  # published whole: offered no more
            assert await await_progress(conn, "m", 7, 10.0) == 0
            await conn.aclose()
            plain = await connect_direct(follower, (LOCAL, ports[1]), expect=seeder.key.peer_id)
            with trio.move_on_after(0.3) as held:
                await await_progress(plain, "m", 0, 10.0)
            assert held.cancelled_caught  # no book: nothing will change, so no answer
            await plain.aclose()
            nursery.cancel_scope.cancel()


async def test_a_streaming_follower_waits_on_one_long_poll_not_a_poll_twice_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While a version is being written and its seeder speaks progress-wait,
    the follower holds one long poll instead of a check round (and a new
    long poll) every STREAM_POLL_SECONDS: few connections on the trainer's
    node however long the write lasts; the next shard still wakes it."""
    caplog.set_level(logging.DEBUG, logger="p2pckpt.serve")
    seeder, follower, step = _homes(tmp_path)
    shard = "model-00001-of-00002.safetensors"
    book = ProgressBook()
    book.offer(*publish_in_progress(seeder, step, "m", 3, frozenset({shard}), 7), step)
    models = tmp_path / "models"
    state = FollowState(FollowSpec("m", models))

    def connections() -> int:
        return sum("peer connected" in r.getMessage() for r in caplog.records)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await _serve_and_follow(nursery, seeder, book, follower, state)
            await _until(lambda: state.streaming and state.prefetched, "the shard prefetched")
            # The check round a prefetch is followed by, then the long poll:
            # a few connections, then none while it is held.
            with trio.fail_after(10):
                last = -1
                while connections() != last:
                    last = connections()
                    await trio.sleep(0.5)  # one STREAM_POLL_SECONDS
            before = connections()
            await trio.sleep(2 * 1.0)  # four STREAM_POLL_SECONDS
            assert connections() - before <= 1, connections() - before
            both = frozenset({shard, "model-00002-of-00002.safetensors"})
            book.offer(*publish_in_progress(seeder, step, "m", 3, both, 8), step)
            await _until(lambda: state.prefetched.get((seeder.key.peer_id.key, 3)) == 8, "seq 8")
            nursery.cancel_scope.cancel()
