"""Several copies of one version (issue 18): each stays catalogued, each can
be verified and repaired in place, and forgetting one keeps the other."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from p2pckpt.publish import publish
from p2pckpt.store.verify import compare
from tests.io.test_pieces_pull import MIB, _homes, _pull, _serving


async def test_two_copies_of_one_version_are_both_catalogued_and_repairable(
    tmp_path: Path,
) -> None:
    seeder, puller = _homes(tmp_path)
    data = os.urandom(9 * MIB)
    f = tmp_path / "model.bin"
    f.write_bytes(data)
    manifest = publish(seeder, f, "model", version=1)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            await _pull(seeder, puller, port, 1, a)
            second = await _pull(seeder, puller, port, 1, b)
            assert second.bytes_downloaded == 0  # taken from the first copy
            cat = puller.catalog
            for where in (a, b):
                assert [e.root for e in cat.at_location(where)] == [manifest.root]
                assert not compare(where, manifest)  # `verify` finds and checks each
            # b damaged since: pulling onto it repairs it (it is a copy we
            # pulled), from the sound copy a: nothing crosses the wire
            raw = bytearray(b.read_bytes())
            os.unlink(b)  # a copy of its own, not a link to a's bytes
            raw[5 * MIB] ^= 0xFF
            b.write_bytes(bytes(raw))
            fixed = await _pull(seeder, puller, port, 1, b)
            assert fixed.bytes_downloaded == 0
            assert b.read_bytes() == data and a.read_bytes() == data
    # a deleted by retention: the version is now served from b, not dropped
    assert cat.forget_location(a) == 0
    entry = cat.by_root(manifest.root)
    assert entry is not None and entry.location == str(b)
    assert cat.at_location(a) == [] and cat.roots_under(tmp_path) == {manifest.root}
    assert cat.forget_location(b) == 1 and cat.by_root(manifest.root) is None


async def test_a_copy_pulled_after_the_first_was_deleted_takes_its_place(tmp_path: Path) -> None:
    """The copy served from was deleted by hand (the catalog was not told):
    the next copy pulled becomes the one served, not a copy beside a ghost."""
    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(5 * MIB))
    manifest = publish(seeder, f, "model", version=1)
    a, c = tmp_path / "a.bin", tmp_path / "c.bin"
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            await _pull(seeder, puller, port, 1, a)
            await trio.Path(a).unlink()
            await _pull(seeder, puller, port, 1, c)
    entry = puller.catalog.by_root(manifest.root)
    assert entry is not None and entry.location == str(c)
