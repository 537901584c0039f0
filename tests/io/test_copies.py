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


async def test_gc_forgets_a_changed_copy_and_serves_the_other(tmp_path: Path) -> None:
    """gc (issue 19): of two pulled copies, the one served from was edited
    by hand (same size): it is forgotten and the sound copy takes its place;
    the version stays. Once that one is deleted too, the version goes.
    The files are never touched."""
    from p2pckpt.store.gc import collect

    seeder, puller = _homes(tmp_path)
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(3 * MIB))
    manifest = publish(seeder, f, "model", version=1)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with trio.fail_after(60):
        async with _serving(seeder) as port:
            await _pull(seeder, puller, port, 1, a)
            await _pull(seeder, puller, port, 1, b)
    cat = puller.catalog
    assert cat.by_root(manifest.root).location == str(a)  # type: ignore[union-attr]
    clean = collect(cat, dry_run=True)
    assert (clean.checked, clean.bad) == (1, [])
    assert cat.copy_locations(manifest.root) == [(str(b), None)], cat.copy_locations(manifest.root)
    edited = os.urandom(3 * MIB)
    os.unlink(a)  # b may share a's inode (a whole file reused): edit a alone
    a.write_bytes(edited)
    stamp = cat.stamps(manifest.root, str(a))[manifest.files[0].path]
    if a.stat().st_mtime_ns == stamp[1]:  # a coarse clock: make the edit visible
        os.utime(a, ns=(stamp[1] + 10**9, stamp[1] + 10**9))
    epoch = cat.epoch()
    report = collect(cat)
    assert [(b.location, b.reason, b.whole) for b in report.bad] == [(str(a), "changed", False)]
    assert report.forgotten == [] and cat.epoch() > epoch
    entry = cat.by_root(manifest.root)
    assert entry is not None and entry.location == str(b) and cat.copy_locations(entry.root) == []
    assert a.read_bytes() == edited  # never touched
    os.unlink(b)
    report = collect(cat)
    assert [(x.location, x.reason, x.whole) for x in report.forgotten] == [
        (str(b), "missing", True)
    ]
    assert cat.by_root(manifest.root) is None and a.exists()
