"""Selective pulls in the store (issue 19): the catalog's selection column
(and its migration), and a staging copy of some files only."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from p2pckpt.store import catalog as catalog_mod
from p2pckpt.store.catalog import Catalog
from p2pckpt.store.staging import Staging, staging_path
from tests.io.test_store import _manifest

FILES = {"a.json": b"a" * 1500, "sub/b.bin": os.urandom(2500), "sub/c.bin": os.urandom(700)}


def _fill(staging: Staging) -> None:
    """Write every wanted chunk, as the swarm would (verified by write_chunk)."""
    for index, entry, chunk in staging.manifest.iter_chunks():
        if index in staging.wanted and index not in staging.done:
            data = FILES[entry.path][chunk.offset : chunk.offset + chunk.length]
            staging.write_chunk(index, data)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_an_old_catalog_opens_and_stays_writable_by_0_1_0(tmp_path: Path) -> None:
    """A catalog made before selective pulls opens, its rows whole copies;
    partial copies are marked in a table of their own, so 0.1.0, which
    inserts rows by position, can still write the catalog (issue 20), and
    a row it writes again is whole."""
    m, env = _manifest("old", 1, FILES)
    schema = catalog_mod._SCHEMA
    old_schema = schema[: schema.index("CREATE TABLE IF NOT EXISTS partial_copies")]
    old_schema += schema[schema.index("CREATE TABLE IF NOT EXISTS stamps") :]
    assert "partial_copies" not in old_schema and "selection" not in old_schema
    db = sqlite3.connect(tmp_path / "c.db")
    db.executescript(old_schema)
    db.execute(
        "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?)",
        (m.root, "old", 1, m.publisher.key, env, str(tmp_path / "x"), "pulled", 1, 3, 0),
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    cat = Catalog(tmp_path / "c.db")
    entry = cat.find("old", 1, whole=True)
    assert entry is not None and entry.selection is None and entry.selected is None
    m2, env2 = _manifest("old", 2, FILES)
    cat.add(m2, env2, tmp_path / "y", "pulled", frozenset({"a.json"}))
    cat.close()
    again = Catalog(tmp_path / "c.db")  # opening twice adds nothing twice
    assert [e.version for e in again.whole_versions()] == [1]
    again.close()
    # 0.1.0 writes as it always did: by position, into the same tables.
    db = sqlite3.connect(tmp_path / "c.db")
    db.execute(
        "INSERT OR REPLACE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?)",
        (m2.root, "old", 2, m2.publisher.key, env2, str(tmp_path / "y"), "pulled", 1, 3, 0),
    )
    db.execute("INSERT INTO copies VALUES (?,?,?)", (m.root, str(tmp_path / "z"), 0))
    db.commit()
    db.close()
    third = Catalog(tmp_path / "c.db")
    assert [e.version for e in third.whole_versions()] == [1, 2]  # what 0.1.0 wrote is whole
    assert third.copy_locations(m.root) == [(str(tmp_path / "z"), None)]


def test_a_partial_copy_is_catalogued_but_never_offered(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    m, env = _manifest("p", 1, FILES)
    part, whole = tmp_path / "part", tmp_path / "whole"
    part.mkdir()
    whole.mkdir()  # a copy whose folder is gone is replaced, not kept beside
    cat.add(m, env, part, "pulled", frozenset({"a.json"}))
    assert cat.find("p", 1) is not None and cat.find("p", 1, whole=True) is None
    assert cat.by_root(m.root) is not None and cat.by_root(m.root, whole=True) is None
    assert cat.whole_versions() == [] and len(cat.summaries()) == 1
    [here] = cat.at_location(part)
    assert here.selected == {"a.json"}
    # only the chunks of its files are indexed for reuse
    digests = [c.digest for _, e, c in m.iter_chunks()]
    found = cat.copies(digests)
    assert {f for places in found.values() for f, *_ in places} == {str(part / "a.json")}
    # a whole copy pulled elsewhere takes its place as the one served; the
    # partial one stays catalogued beside it
    cat.add(m, env, whole, "pulled")
    served = cat.by_root(m.root, whole=True)
    assert served is not None and served.location == str(whole)
    [beside] = cat.at_location(part)
    assert beside.selected == {"a.json"}
    # the whole copy gone: the partial one is served from, as partial (never offered)
    cat.forget_location(whole)
    assert cat.by_root(m.root, whole=True) is None
    row = cat.by_root(m.root)
    assert row is not None and row.location == str(part) and row.selected == {"a.json"}


def test_a_selective_staging_copy_commits_only_its_files(tmp_path: Path) -> None:
    m, env = _manifest("s", 1, FILES)
    dest = tmp_path / "dest"
    wide = Staging(dest, m, env, frozenset({"a.json", "sub/b.bin"}))
    wide.open()
    wide_b = wide.files.file_chunks["sub/b.bin"]
    for index, entry, chunk in m.iter_chunks():  # only b.bin's chunks, then stop
        if entry.path == "sub/b.bin":
            wide.write_chunk(index, FILES[entry.path][chunk.offset : chunk.offset + chunk.length])
    assert not wide.complete and set(wide_b) <= wide.done
    wide.close()
    assert _tree(staging_path(dest) / "data") == {"a.json", "sub", "sub/b.bin"}
    # resumed with a narrower selection: b.bin goes, its folder too at commit
    narrow = Staging(dest, m, env, frozenset({"a.json"}))
    done = narrow.open()
    assert done == set() and _tree(staging_path(dest) / "data") == {"a.json", "sub"}
    _fill(narrow)
    assert narrow.complete
    narrow.commit()
    narrow.close()
    assert _tree(dest) == {"a.json"} and (dest / "a.json").read_bytes() == FILES["a.json"]
    assert not staging_path(dest).exists()


def test_gc_checks_only_the_files_a_partial_copy_holds(tmp_path: Path) -> None:
    """A partial copy lacks the files it did not select: that is not a
    reason to forget it; its own files changing is."""
    from p2pckpt.store.gc import collect

    cat = Catalog(tmp_path / "c.db")
    m, env = _manifest("p", 1, FILES)
    part = tmp_path / "part"
    part.mkdir()
    (part / "a.json").write_bytes(FILES["a.json"])
    cat.add(m, env, part, "pulled", frozenset({"a.json"}))
    assert collect(cat, dry_run=True).bad == []
    (part / "a.json").write_bytes(b"x" * 10)
    report = collect(cat, dry_run=True)
    assert [(b.reason, b.path) for b in report.bad] == [("changed", str(part / "a.json"))]
