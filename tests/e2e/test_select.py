"""Selective pull, a look inside, and dry runs (issue 19), with real processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.nodes import Pair, make_checkpoint, run, run_json

SHARDS = {
    "model-00001-of-00003.safetensors": 9_000_000,
    "model-00002-of-00003.safetensors": 7_500_001,
    "model-00003-of-00003.safetensors": 123,
    "model.safetensors.index.json": 2_000,
    "config.json": 300,
    "tokenizer.json": 40_000,
    "tokenizer_config.json": 500,
    "extra/notes.txt": 77,
}
PICKED = ("config.json", "tokenizer.json", "tokenizer_config.json")
TOTAL = sum(SHARDS.values())


def _publish(pair: Pair, tmp_path: Path, version: int = 1, seed: int = 1) -> Path:
    ckpt = make_checkpoint(tmp_path / f"ck{version}", SHARDS, seed=seed)
    run(pair.a, "publish", str(ckpt), "--name", "llm", "--version", str(version))
    return ckpt


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _catalog(home: Path) -> list[object]:
    """Every row of every table of a node's catalog (to see that nothing changed)."""
    db = sqlite3.connect(home / "catalog.db")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        sql = "SELECT * FROM {}"  # table names from sqlite_master, not input
        return [(t, sorted(db.execute(sql.format(t)).fetchall(), key=repr)) for t in sorted(tables)]
    finally:
        db.close()


def test_ls_files_local_and_from_a_peer(pair: Pair, tmp_path: Path) -> None:
    """`ls NAME@V --files` lists paths and sizes, here and from a peer, text and JSON."""
    _publish(pair, tmp_path)
    server = pair.serve_a()
    local = run_json(pair.a, "ls", "llm@1", "--files", "--local")
    assert local["name"] == "llm" and local["version"] == 1 and local["where"] == "local"
    assert {f["path"]: f["size"] for f in local["files"]} == SHARDS
    remote = run_json(pair.b, "ls", "llm", "--files", "--peer", server.addr)
    assert remote["version"] == 1 and {f["path"]: f["size"] for f in remote["files"]} == SHARDS
    assert remote["where"] != "local"
    text = run(pair.b, "ls", "llm@1", "--files", "--from", server.addr).stdout.splitlines()
    assert any(line.split() == ["9000000", "model-00001-of-00003.safetensors"] for line in text)
    assert any(line.split() == ["77", "extra/notes.txt"] for line in text)
    missing = run(pair.b, "ls", "llm@9", "--files", "--peer", server.addr, check=False)
    assert missing.returncode == 3, missing.stderr
    nothing_here = run(pair.b, "ls", "llm", "--files", "--local", check=False)
    assert nothing_here.returncode == 3, nothing_here.stderr


def test_selective_pull_then_the_rest(pair: Pair, tmp_path: Path) -> None:
    """--include config.json --include 'tokenizer*' fetches only those; verify
    checks only them; a later whole pull downloads only the rest."""
    ckpt = _publish(pair, tmp_path)
    server = pair.serve_a()
    dest = tmp_path / "out" / "llm"
    args = ("pull", "llm", "--from", server.addr, "-o", str(dest))
    part = run_json(pair.b, *args, "--include", "config.json", "--include", "tokenizer*")
    picked = sum(SHARDS[p] for p in PICKED)
    assert _files(dest) == set(PICKED)
    assert part["bytes_downloaded"] == picked == part["bytes_total"]
    assert part["selection"] == sorted(PICKED) and part["files"] == 3
    for p in PICKED:
        assert (dest / p).read_bytes() == (ckpt / p).read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # The copy is catalogued as partial and never offered as the version.
    listed = run_json(pair.b, "ls", "--local")
    assert [(r["name"], r["partial"]) for r in listed] == [("llm", True)]
    ok = run(pair.b, "verify", str(dest))
    assert "in part" in ok.stdout and "3 of 8 files" in ok.stdout
    doc = json.loads(run(pair.b, "verify", str(dest), "--json").stdout)
    assert doc["ok"] and doc["partial"] and doc["bytes"] == picked
    (dest / "tokenizer.json").write_bytes(b"x" * SHARDS["tokenizer.json"])
    bad = run(pair.b, "verify", str(dest), check=False)
    assert bad.returncode == 9 and "damaged: tokenizer.json" in bad.stdout
    (dest / "tokenizer.json").write_bytes((ckpt / "tokenizer.json").read_bytes())
    # Excluding from an include: the shards but not the third one.
    more = run_json(pair.b, *args, "--include", "model-*", "--exclude", "*-00003-of-*", "--dry-run")
    shards12 = (
        SHARDS["model-00001-of-00003.safetensors"] + SHARDS["model-00002-of-00003.safetensors"]
    )
    assert more["bytes_to_download"] == shards12 and more["bytes_reused"] == picked
    assert more["in_place"] is True  # the selection grows by what DEST holds
    # The whole version into the same DEST: only the rest is downloaded.
    whole = run_json(pair.b, *args)
    assert _files(dest) == set(SHARDS)
    assert whole["bytes_downloaded"] == TOTAL - picked
    assert whole["bytes_reused"] == picked and whole["selection"] is None
    assert run(pair.b, "verify", str(dest)).stdout.startswith(f"ok: {dest} matches llm@1 (")
    listed = run_json(pair.b, "ls", "--local")
    assert [(r["name"], r["partial"]) for r in listed] == [("llm", False)]


def test_selection_matching_nothing_is_refused_before_writing(pair: Pair, tmp_path: Path) -> None:
    _publish(pair, tmp_path)
    server = pair.serve_a()
    dest = tmp_path / "out" / "llm"
    before = _catalog(pair.b)
    bad = run(
        pair.b,
        "pull",
        "llm",
        "--from",
        server.addr,
        "-o",
        str(dest),
        "--include",
        "*.bin",
        check=False,
    )
    assert bad.returncode == 2, bad.stderr
    assert "matches no file of llm@1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()
    everything = run(
        pair.b,
        "pull",
        "llm",
        "--from",
        server.addr,
        "-o",
        str(dest),
        "--exclude",
        "*",
        check=False,
    )
    assert everything.returncode == 2 and not (tmp_path / "out").exists()
    after = _catalog(pair.b)
    assert [t for t in after if t[0] != "highest"] == [t for t in before if t[0] != "highest"]


def test_dry_run_of_a_fresh_pull_and_of_an_update_in_place(pair: Pair, tmp_path: Path) -> None:
    """--dry-run says what would move and writes nothing: no DEST, no staging,
    no catalog change."""
    _publish(pair, tmp_path, 1)
    server = pair.serve_a()
    dest = tmp_path / "out" / "llm"
    args = ("pull", "llm", "--from", server.addr, "-o", str(dest))
    before = _catalog(pair.b)
    fresh = run_json(pair.b, *args, "--dry-run")
    assert fresh["version"] == 1 and fresh["bytes_to_download"] == TOTAL
    assert fresh["bytes_reused"] == 0 and fresh["disk_needed"] == TOTAL
    assert fresh["in_place"] is False and fresh["dest"] == str(dest)
    assert len(fresh["peers"]) == 1 and len(fresh["files"]) == len(SHARDS)
    assert not (tmp_path / "out").exists() and _catalog(pair.b) == before
    text = run(pair.b, *args, "--dry-run").stdout
    assert "would pull llm@1" in text and "DEST would be created" in text
    picked = run_json(pair.b, *args, "--dry-run", "--include", "tokenizer*")
    assert picked["bytes_to_download"] == SHARDS["tokenizer.json"] + SHARDS["tokenizer_config.json"]
    assert [f["path"] for f in picked["files"]] == ["tokenizer.json", "tokenizer_config.json"]
    run(pair.b, *args)
    # v2: the first shard and config change, the rest is the same bytes.
    ck2 = tmp_path / "ck2"
    make_checkpoint(ck2, SHARDS, seed=1)
    changed = {"model-00001-of-00003.safetensors", "config.json"}
    for p in changed:
        (ck2 / p).write_bytes(bytes(reversed((ck2 / p).read_bytes())))
    run(pair.a, "publish", str(ck2), "--name", "llm", "--version", "2")
    before = _catalog(pair.b)
    snapshot = {p: (dest / p).read_bytes() for p in _files(dest)}
    update = run_json(pair.b, *args, "--dry-run")
    changed_bytes = sum(SHARDS[p] for p in changed)
    assert update["version"] == 2 and update["in_place"] is True
    # Reversed bytes: every chunk of the changed files is new (no chunk hash matches).
    assert update["bytes_to_download"] == changed_bytes
    assert update["bytes_reused"] == TOTAL - changed_bytes
    assert _catalog(pair.b) == before
    assert {p: (dest / p).read_bytes() for p in _files(dest)} == snapshot
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    # The real update then moves what the dry run said.
    done = run_json(pair.b, *args)
    assert done["version"] == 2 and done["bytes_downloaded"] <= changed_bytes


def test_dry_run_of_push(pair: Pair, tmp_path: Path) -> None:
    """push --dry-run names the version, its size and files and each target,
    asks no target to pull, and exits 0."""
    _publish(pair, tmp_path)
    server = pair.serve_a()  # B is not a daemon here: a target reached, not holding it
    before_a, before_b = _catalog(pair.a), _catalog(pair.b)
    none = run(pair.b, "push", "llm", "--to", server.addr, "--dry-run", check=False)
    assert none.returncode == 3
    run(pair.b, "pull", "llm", "--from", server.addr, "-o", str(tmp_path / "b"))
    before_b = _catalog(pair.b)
    doc = run_json(pair.b, "push", "llm", "--to", server.addr, "--dry-run")
    assert doc["version"] == 1 and doc["bytes_total"] == TOTAL
    assert len(doc["files"]) == len(SHARDS)
    [target] = doc["targets"]
    assert target["has_version"] is True and target["bytes_to_download"] == 0
    assert doc["bytes_to_download"] == 0 and doc["bytes_reused"] == TOTAL
    assert _catalog(pair.a) == before_a and _catalog(pair.b) == before_b
