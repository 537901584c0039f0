"""Retiring what was published, with real processes: ``unpublish`` on a
running seeder, ``gc`` after folders were deleted or edited by hand."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.nodes import CLI, Pair, make_checkpoint, run, run_json, wait_until


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_unpublish_on_a_running_seeder(pair: Pair, tmp_path: Path) -> None:
    """A running serve stops listing and serving an unpublished version
    without a restart; a pull of it says it is not offered (exit 3); the
    files stay; the other version is still served; bad refs are refused."""
    v1 = make_checkpoint(tmp_path / "v1", {"a.bin": 300_000, "b.bin": 1000}, seed=1)
    v2 = make_checkpoint(tmp_path / "v2", {"a.bin": 300_000, "b.bin": 1000}, seed=2)
    before = _tree(v1)
    run(pair.a, "publish", str(v1), "--name", "m", "--version", "1")
    run(pair.a, "publish", str(v2), "--name", "m", "--version", "2")
    server = pair.serve_a()
    assert sorted(r["version"] for r in run_json(pair.b, "ls", "--peer", server.addr)) == [1, 2]
    # The seeder has v1's chunk table cached once a pull read it.
    run(pair.b, "pull", "m@1", "--from", server.addr, "-o", str(tmp_path / "first"))

    doc = run_json(pair.a, "unpublish", "m@1")
    assert doc["name"] == "m" and doc["version"] == 1
    assert [u["location"] for u in doc["unpublished"]] == [str(v1)]
    listed = run_json(pair.b, "ls", "--peer", server.addr)
    assert [r["version"] for r in listed] == [2]
    assert [r["version"] for r in run_json(pair.a, "ls", "--local")] == [2]

    refused = run(
        pair.b, "pull", "m@1", "--from", server.addr, "-o", str(tmp_path / "x"), check=False
    )
    assert refused.returncode == 3, refused.stderr
    assert "no checkpoint m@1 is offered here" in refused.stderr
    assert not (tmp_path / "x").exists()
    assert _tree(v1) == before  # files left alone
    got = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "y"))
    assert got["version"] == 2 and _tree(tmp_path / "y") == _tree(v2)
    wait_until(
        lambda: "no longer serving versions=1" in server.log.read_text(),
        10,
        "the seeder to drop v1's cached chunk table",
    )

    unknown = run(pair.a, "unpublish", "m@1", check=False)
    assert unknown.returncode == 3 and "holds no m@1" in unknown.stderr
    bare = run(pair.a, "unpublish", "m", check=False)
    assert bare.returncode == 2 and "exact version" in bare.stderr
    assert server.alive()


def test_a_pull_under_way_stops_when_its_version_is_unpublished(pair: Pair, tmp_path: Path) -> None:
    """Chunks stop flowing once the version leaves the catalog: a slow pull
    running at that moment fails with "not found" (exit 3) instead of
    finishing from the seeder's cached chunk table (what was already asked
    for may still arrive)."""
    with (pair.a / "config.toml").open("a") as cfg:
        cfg.write("[limits]\nupload = 5000000\n")
    ck = make_checkpoint(
        tmp_path / "big", {"w.bin": 40_000_000}, seed=3
    )  # over the 24 MiB a puller asks ahead
    run(pair.a, "publish", str(ck), "--name", "big", "--version", "1")
    server = pair.serve_a()
    dest = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "--home", str(pair.b), "pull", "big@1", "--from", server.addr, "-o", str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        journal = tmp_path / ".out.p2pckpt-partial" / "journal"
        wait_until(
            lambda: journal.exists() and journal.stat().st_size > 41, 30, "the pull to start"
        )
        run(pair.a, "unpublish", "big@1")
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 3, err
    assert any(why in err for why in ("no longer offers this version", "no source holds")), err
    assert not dest.exists()
    assert _tree(ck)["w.bin"] == (ck / "w.bin").read_bytes()


def test_gc_forgets_deleted_and_changed_copies(pair: Pair, tmp_path: Path) -> None:
    """One published folder deleted, another edited (same size), a third
    intact: --dry-run reports and changes nothing; gc forgets exactly the
    two, with an exact summary; no file is touched."""
    gone = make_checkpoint(tmp_path / "gone", {"w.bin": 5000}, seed=1)
    edited = make_checkpoint(tmp_path / "edited", {"w.bin": 5000, "c.json": 10}, seed=2)
    kept = make_checkpoint(tmp_path / "kept", {"w.bin": 5000}, seed=3)
    run(pair.a, "publish", str(gone), "--name", "g", "--version", "1")
    run(pair.a, "publish", str(edited), "--name", "e", "--version", "2")
    run(pair.a, "publish", str(kept), "--name", "k", "--version", "3")
    for p in gone.iterdir():
        p.unlink()
    gone.rmdir()
    target = edited / "w.bin"
    stamp = target.stat().st_mtime_ns
    target.write_bytes(os.urandom(5000))  # same size, new bytes
    if target.stat().st_mtime_ns == stamp:  # a coarse clock: make the edit visible
        os.utime(target, ns=(stamp + 10**9, stamp + 10**9))
    snapshot = {p: _tree(p) for p in (edited, kept)}

    dry = run_json(pair.a, "gc", "--dry-run")
    assert (dry["checked"], dry["forgotten"], dry["dry_run"]) == (3, 2, True)
    assert sorted((c["name"], c["version"], c["reason"]) for c in dry["copies"]) == [
        ("e", 2, "changed"),
        ("g", 1, "missing"),
    ]
    assert len(run_json(pair.a, "ls", "--local")) == 3

    out = run(pair.a, "gc").stdout.splitlines()
    assert out == [
        "3 versions checked, 2 forgotten",
        f"  forgot e@2: changed {target}",
        f"  forgot g@1: missing {gone}",
    ]
    assert [(r["name"], r["version"]) for r in run_json(pair.a, "ls", "--local")] == [("k", 3)]
    assert {p: _tree(p) for p in (edited, kept)} == snapshot
    again = run_json(pair.a, "gc")
    assert (again["checked"], again["forgotten"], again["copies"]) == (1, 0, [])
