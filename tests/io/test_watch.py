"""The folder watcher on real files, a real catalog and real inotify.

Waiting is done on ``on_published`` (a channel), never on sleeps; the only
sleeps pace the simulated writers, and a few bounded windows assert that
nothing is published while a checkpoint is incomplete.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from p2pckpt.config import WatchSpec
from p2pckpt.daemon import watch
from p2pckpt.daemon.completion import INDEX_FILE
from p2pckpt.daemon.watch import watch_folder
from p2pckpt.home import Home
from p2pckpt.manifest.manifest import Manifest

STABLE = 1.0
LIMIT = 30  # seconds for any one test


def safetensors(n: int) -> bytes:
    """A whole safetensors file: one F32 tensor of ``n`` elements."""
    header = json.dumps({"t": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + os.urandom(4 * n)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


async def append(path: Path, data: bytes) -> None:
    await trio.to_thread.run_sync(_append, path, data)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.init(tmp_path / "home")[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    path.mkdir()
    return path


@asynccontextmanager
async def watching(
    home: Home, spec: WatchSpec, serving: set[bytes] | None = None
) -> AsyncIterator[trio.MemoryReceiveChannel[Manifest]]:
    """Run a watcher; yields the channel its publications arrive on."""
    send, receive = trio.open_memory_channel[Manifest](64)
    busy = (lambda: serving) if serving is not None else None
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(watch_folder, home, spec, on_published=send.send, serving=busy))
        yield receive
        nursery.cancel_scope.cancel()


def nothing_yet(published: trio.MemoryReceiveChannel[Manifest]) -> None:
    with pytest.raises(trio.WouldBlock):
        published.receive_nowait()


def published_locations(home: Home) -> list[str]:
    return [e.location for e in home.catalog.summaries() if e.origin == "published"]


async def test_a_slow_writer_is_published_only_once_complete(home: Home, folder: Path) -> None:
    """A file growing for ~3 s (a write every 0.2 s, below stable_seconds) is not
    in the catalog while it grows, and is published, whole and with the step
    from its name, within stable_seconds + a little after the last write."""
    spec = WatchSpec(folder, "llama-ft", complete="stable", stable_seconds=STABLE)
    target = folder / "llama-ft-step1200.safetensors"
    data = safetensors(60_000)
    pieces = [data[i : i + len(data) // 15 + 1] for i in range(0, len(data), len(data) // 15 + 1)]
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            for piece in pieces:
                await append(target, piece)
                assert home.catalog.find("llama-ft", None) is None
                nothing_yet(published)
                await trio.sleep(0.2)  # the writer's pace, not synchronisation
            last_write = trio.current_time()
            manifest = await published.receive()
            took = trio.current_time() - last_write
    assert manifest.version == 1200
    assert manifest.total_bytes == len(data) == target.stat().st_size
    assert STABLE <= took + 0.2 < STABLE + 4.0
    assert published_locations(home) == [str(target)]


async def test_polling_fallback_without_inotify(
    home: Home, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify is missing the folder is rescanned; the stable rule still
    holds a growing file back."""
    monkeypatch.setattr(watch.Inotify, "open", classmethod(lambda cls: None))
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.3)
    spec = WatchSpec(folder, "m", complete="stable", stable_seconds=STABLE)
    target = folder / "checkpoint-42"
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            for _ in range(10):
                await append(target, os.urandom(10_000))
                nothing_yet(published)
                await trio.sleep(0.2)
            manifest = await published.receive()
    assert (manifest.version, manifest.total_bytes) == (42, 100_000)


async def test_a_file_present_at_start_is_published(home: Home, folder: Path) -> None:
    spec = WatchSpec(folder, "m", complete="stable", stable_seconds=STABLE)
    (folder / "checkpoint-700.safetensors").write_bytes(safetensors(100))
    (folder / ".hidden-step-5").write_bytes(b"x")
    (folder / "step-6.tmp").write_bytes(b"x")
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            manifest = await published.receive()
            (folder / "step-800").mkdir()  # a sync point: published after the rest was looked at
            (folder / "step-800" / "w.bin").write_bytes(b"w")
            assert (await published.receive()).version == 800
            nothing_yet(published)
    assert manifest.version == 700
    assert sorted(e.version for e in home.catalog.summaries()) == [700, 800]


async def test_marker_directory(home: Home, folder: Path) -> None:
    """A directory is published once its marker appears, marker included."""
    spec = WatchSpec(folder, "m", complete="marker", marker="COMPLETE")
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            waiting = folder / "step-100"
            waiting.mkdir()
            (waiting / "model.bin").write_bytes(os.urandom(5000))
            done = folder / "step-200"
            done.mkdir()
            (done / "model.bin").write_bytes(os.urandom(5000))
            (done / "COMPLETE").touch()
            first = await published.receive()  # step-100 was looked at first (step order)
            assert first.version == 200
            nothing_yet(published)
            assert home.catalog.find("m", 100) is None
            (waiting / "COMPLETE").write_bytes(b"")
            second = await published.receive()
    assert second.version == 100
    assert sorted(f.path for f in second.files) == ["COMPLETE", "model.bin"]


async def test_marker_beside_a_single_file(home: Home, folder: Path) -> None:
    spec = WatchSpec(folder, "m", complete="marker", marker="DONE")
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            (folder / "model-step3.pt").write_bytes(b"weights")
            (folder / "model-step3.pt.DONE").touch()
            manifest = await published.receive()
    assert manifest.version == 3
    assert [f.path for f in manifest.files] == ["model-step3.pt"]


async def test_index_directory_waits_for_its_last_shard(home: Home, folder: Path) -> None:
    """With the index rule a sharded directory stays unpublished while a shard
    is truncated — even when nothing is written for longer than the grace —
    and is published once the last shard is whole."""
    spec = WatchSpec(folder, "m", complete="index")
    ckpt = folder / "checkpoint-1500"
    ckpt.mkdir()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    one, two = safetensors(20_000), safetensors(30_000)
    index = {"metadata": {}, "weight_map": {"a": shards[0], "b": shards[1]}}
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            (ckpt / "config.json").write_text("{}")
            (ckpt / shards[0]).write_bytes(one)
            (ckpt / INDEX_FILE).write_text(json.dumps(index))
            for i in range(0, len(two) - 1000, 20_000):
                await append(ckpt / shards[1], two[i : i + 20_000])
                await trio.sleep(0.1)
            with trio.move_on_after(2.5):  # stalled mid-shard, longer than the grace
                await published.receive()
                pytest.fail("published with a truncated shard")
            assert home.catalog.find("m", None) is None
            size = (ckpt / shards[1]).stat().st_size
            await append(ckpt / shards[1], two[size:])
            manifest = await published.receive()
    assert manifest.version == 1500
    sizes = {f.path: f.size for f in manifest.files}
    assert sizes == {
        "config.json": 2,
        shards[0]: len(one),
        shards[1]: len(two),
        INDEX_FILE: len(json.dumps(index)),
    }


async def test_a_child_stays_one_version(home: Home, folder: Path) -> None:
    """Published children are not published again: not when touched, not after
    a restart. A child without a step counts up."""
    spec = WatchSpec(folder, "m", complete="stable", stable_seconds=STABLE)
    first = folder / "step-10.safetensors"
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            first.write_bytes(safetensors(50))
            assert (await published.receive()).version == 10
            os.utime(first)  # an event on a published child: ignored
            (folder / "final").write_bytes(b"final weights")  # no step: counts up
            assert (await published.receive()).version == 11
            nothing_yet(published)
        async with watching(home, spec) as published:  # a restart
            (folder / "step-20.safetensors").write_bytes(safetensors(60))
            assert (await published.receive()).version == 20
            nothing_yet(published)
    assert sorted(e.version for e in home.catalog.summaries()) == [10, 11, 20]
    assert published_locations(home).count(str(first)) == 1


async def test_unpublishable_children_do_not_stop_the_watcher(home: Home, folder: Path) -> None:
    """A tree with a symlink, a version clash and a vanished child are logged
    and skipped; later children are still published."""
    spec = WatchSpec(folder, "m", complete="stable", stable_seconds=STABLE)
    with trio.fail_after(LIMIT):
        async with watching(home, spec) as published:
            (folder / "step-1").write_bytes(b"one")
            assert (await published.receive()).version == 1
            linked = folder / "step-2"
            linked.mkdir()
            (linked / "w.bin").write_bytes(b"w")
            (linked / "escape").symlink_to("/etc/passwd")
            (folder / "checkpoint-1").write_bytes(b"other bytes, same version")
            (folder / "step-3").write_bytes(b"soon gone")
            (folder / "step-3").unlink()
            (folder / "step-4").write_bytes(b"four")
            assert (await published.receive()).version == 4
            nothing_yet(published)
    assert sorted(e.version for e in home.catalog.summaries()) == [1, 4]


async def test_watching_a_missing_folder_is_a_config_error(home: Home, tmp_path: Path) -> None:
    from p2pckpt.errors import ConfigError

    spec = WatchSpec(tmp_path / "nope", "m")
    with pytest.raises(ConfigError, match="not a directory"):
        await watch_folder(home, spec)


async def test_keep_retires_old_versions_but_spares_one_being_served(
    home: Home, folder: Path
) -> None:
    """keep = 2: after each publish only the newest two published versions of
    this folder stay in the catalog, except one a peer is reading; retired
    children keep their files and are not published again after a restart;
    a version number is never reused."""
    spec = WatchSpec(folder, "m", complete="stable", stable_seconds=0.3, keep=2)
    busy: set[bytes] = set()
    with trio.fail_after(LIMIT):
        async with watching(home, spec, serving=busy) as published:
            roots = {}
            for step in (10, 20):
                (folder / f"step-{step}.pt").write_bytes(os.urandom(5000))
                roots[step] = (await published.receive()).root
            busy.add(roots[10])  # a peer is reading step 10
            (folder / "step-30.pt").write_bytes(os.urandom(5000))
            await published.receive()
            held = sorted(e.version for e in home.catalog.summaries())
            assert held == [10, 20, 30]  # 10 spared while served
            busy.clear()
            (folder / "step-40.pt").write_bytes(os.urandom(5000))
            await published.receive()
            assert sorted(e.version for e in home.catalog.summaries()) == [30, 40]
        assert all((folder / f"step-{s}.pt").exists() for s in (10, 20, 30, 40))
        # Restarted: nothing is republished, and an unnumbered child counts on
        # from the highest version ever published, not from the ones left.
        async with watching(home, spec) as published:
            (folder / "extra.pt").write_bytes(os.urandom(5000))
            assert (await published.receive()).version == 41
            nothing_yet(published)
    assert sorted(e.version for e in home.catalog.summaries()) == [40, 41]
