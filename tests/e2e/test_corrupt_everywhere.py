"""Issue 13, item 5: when every source sends the same chunk corrupt, the pull
is an integrity failure (exit 9, naming the chunk and the peers), not "every
source failed" (exit 1); sources that merely vanish keep exit 1. Lying
seeders in this process, a real ``p2pckpt pull`` process on 127.0.0.1."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from p2pckpt.errors import ChannelClosed
from p2pckpt.identity.keys import NodeKey
from p2pckpt.store import journal
from p2pckpt.store.staging import staging_path
from p2pckpt.wire import messages as m
from p2pckpt.wire.codec import chunk_header
from tests.e2e.nodes import Pair
from tests.e2e.test_security import SMALL_CHUNK, EvilSeeder, arun, new_key, signed_file

BAD = 3


@pytest.fixture
async def seeders(pair: Pair, tmp_path: Path) -> AsyncIterator[list[EvilSeeder]]:
    """Two scripted seeders on 127.0.0.1 that B trusts to serve and publish."""
    found = []
    async with trio.open_nursery() as nursery:
        for name in ("m1", "m2"):
            key = new_key(tmp_path / name)
            proc = await arun(
                pair.b, "trust", "add", str(key.peer_id), "--name", name,
                "--role", "pull", "--role", "publish",
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            seeder = EvilSeeder(key)
            await seeder.start(nursery)
            found.append(seeder)
        yield found
        nursery.cancel_scope.cancel()


def _bad(pieces: list[bytes]) -> bytes:
    bad = bytearray(pieces[BAD])
    bad[77] ^= 0x04
    return bytes(bad)


def _flip(pieces: list[bytes], honest: Callable[[m.ChunkRequest], bytes]) -> Callable[..., bytes]:
    bad = _bad(pieces)

    def reply(req: m.ChunkRequest) -> bytes:
        if req.index == BAD:
            return chunk_header(req.req_id, len(bad)) + bad
        return honest(req)

    return reply


def _vanish(req: m.ChunkRequest) -> bytes:
    raise ChannelClosed("the seeder went away")  # EvilSeeder.handle closes the stream


def _offer(seeders: list[EvilSeeder], publisher: NodeKey) -> tuple[bytes, list[bytes], bytes]:
    data = random.Random(13).randbytes(8 * SMALL_CHUNK + 99)
    manifest, envelope, pieces = signed_file(publisher, "twice-bad", data)
    return envelope, pieces, manifest.root


async def _pull(pair: Pair, seeders: list[EvilSeeder], dest: Path) -> tuple[int, str, str]:
    args = ["pull", "twice-bad", "-o", str(dest), "--streams", "1"]
    for seeder in seeders:
        args += ["--from", seeder.addr]
    proc = await arun(pair.b, *args)
    return proc.returncode, proc.stdout, proc.stderr


async def test_the_same_chunk_corrupt_on_every_source_exits_9(
    pair: Pair, seeders: list[EvilSeeder], tmp_path: Path
) -> None:
    """Both sources send chunk 3 with a flipped bit (bad at the origin): exit 9,
    one line naming chunk 3 and both peers; chunk 3 is neither written nor
    journaled, the rest is kept for the next run."""
    envelope, pieces, root = _offer(seeders, seeders[0].key)
    for seeder in seeders:
        seeder.offer(envelope, pieces, chunk_reply=_flip(pieces, seeder.honest_chunk))
    dest = tmp_path / "out" / "model.safetensors"
    code, out, err = await _pull(pair, seeders, dest)
    assert code == 9, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert f"chunk {BAD}: hash mismatch from every source" in err
    for seeder in seeders:
        assert f"{seeder.key.peer_id.short} (chunk {BAD})" in err
    assert not dest.exists()
    done = journal.parse((staging_path(dest) / "journal").read_bytes(), root, len(pieces))
    assert BAD not in done
    assert _bad(pieces) not in (staging_path(dest) / "data" / "model.safetensors").read_bytes()


async def test_sources_that_vanish_or_lie_on_one_of_two_stay_exit_1(
    pair: Pair, seeders: list[EvilSeeder], tmp_path: Path
) -> None:
    """Every source gone without a proven bad chunk from each of them is not
    an integrity verdict: both vanishing, or one lying and one vanishing
    (it might have had good data), is "every source failed", exit 1."""
    envelope, pieces, _ = _offer(seeders, seeders[0].key)
    for seeder in seeders:
        seeder.offer(envelope, pieces, chunk_reply=_vanish)
    code, _, err = await _pull(pair, seeders, tmp_path / "out" / "a.bin")
    assert code == 1, err
    assert "every source failed" in err and "Traceback" not in err
    seeders[0].offer(envelope, pieces, chunk_reply=_flip(pieces, seeders[0].honest_chunk))
    code, _, err = await _pull(pair, seeders, tmp_path / "out" / "b.bin")
    assert code == 1, err
    assert "every source failed" in err and "hash mismatch" in err
