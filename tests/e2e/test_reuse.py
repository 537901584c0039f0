"""Reuse before download (issue 6), with real processes: a new version moves
only its changed chunks; everything else comes from local bytes, verified."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from p2pckpt.home import Home
from tests.core.test_layout import model, safetensors
from tests.e2e.nodes import Pair, run, same_tree

NAME = "ft"
MIB = 1 << 20


def _expected_reuse(home: Path, old: int, new: int) -> tuple[int, int]:
    """(reused, downloaded) for pulling ``new`` with ``old`` held: chunks of
    ``new`` whose hash ``old`` has are reused, the rest downloaded."""
    catalog = Home.open(home).catalog
    old_entry, new_entry = catalog.find(NAME, old), catalog.find(NAME, new)
    assert old_entry is not None and new_entry is not None
    have = {c.digest for _, _, c in old_entry.manifest().iter_chunks()}
    chunks = [c for _, _, c in new_entry.manifest().iter_chunks()]
    reused = sum(c.length for c in chunks if c.digest in have)
    return reused, sum(c.length for c in chunks) - reused


def _pull(pair: Pair, addr: str, version: int, dest: Path) -> dict[str, int]:
    proc = run(pair.b, "pull", f"{NAME}@{version}", "--from", addr, "-o", str(dest), "--json")
    doc: dict[str, int] = json.loads(proc.stdout)
    return doc


def _write_model(ck: Path, tensors: list[tuple[str, bytes]], meta: str = "") -> None:
    ck.mkdir(exist_ok=True)
    (ck / "model.safetensors").write_bytes(safetensors(tensors, meta))
    (ck / "config.json").write_text('{"arch": "test"}\n')


def test_changed_tensors_and_a_grown_header_move_only_what_changed(
    pair: Pair, tmp_path: Path
) -> None:
    """v2 rewrites one tensor in place; v3 also grows the header by 37 bytes,
    shifting every tensor. Each pull downloads exactly the chunks whose hash
    the previous version lacks, and reuses the rest from B's own copy."""
    ck = tmp_path / "ck"
    tensors = model()
    _write_model(ck, tensors, meta="step 100")
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "1")
    a = pair.serve_a()
    first = _pull(pair, a.addr, 1, tmp_path / "v1")
    assert first["bytes_reused"] == 0
    # (a) one tensor (5 MiB + 7 bytes) changed in place
    name, data = tensors[5]
    tensors[5] = (name, random.Random(7).randbytes(len(data)))
    _write_model(ck, tensors, meta="step 100")
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "2")
    doc = _pull(pair, a.addr, 2, tmp_path / "v2")
    reused, downloaded = _expected_reuse(pair.a, 1, 2)
    assert (doc["bytes_reused"], doc["bytes_downloaded"]) == (reused, downloaded)
    assert downloaded <= len(data) + 4 * MIB  # its two chunks, not the whole file
    assert same_tree(ck, tmp_path / "v2")
    # (b) and the header grew by 37 bytes: every offset shifts
    _write_model(ck, tensors, meta="step 100" + "." * 37)
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "3")
    doc = _pull(pair, a.addr, 3, tmp_path / "v3")
    reused, downloaded = _expected_reuse(pair.a, 2, 3)
    assert (doc["bytes_reused"], doc["bytes_downloaded"]) == (reused, downloaded)
    header = 8 + int.from_bytes((ck / "model.safetensors").read_bytes()[:8], "little")
    assert downloaded == header  # only the header chunk
    assert same_tree(ck, tmp_path / "v3")


def test_sharded_checkpoint_one_shard_replaced_one_added(pair: Pair, tmp_path: Path) -> None:
    """(c) Unchanged shards are reused whole; the new and replaced ones are
    downloaded; a catalogued copy damaged on disk is never trusted whole:
    only its undamaged pieces are used."""
    rng = random.Random(3)
    ck = tmp_path / "ck"
    ck.mkdir()
    for i in range(4):
        (ck / f"shard-{i}.bin").write_bytes(rng.randbytes(3 * MIB + i))
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "1")
    a = pair.serve_a()
    _pull(pair, a.addr, 1, tmp_path / "v1")
    (ck / "shard-2.bin").write_bytes(rng.randbytes(3 * MIB + 2))
    (ck / "shard-4.bin").write_bytes(rng.randbytes(MIB))
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "2")
    # Damage B's copy of shard 0 in place (same size): its chunk must be fetched.
    bad = tmp_path / "v1" / "shard-0.bin"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 1
    bad.write_bytes(bytes(raw))
    doc = _pull(pair, a.addr, 2, tmp_path / "v2")
    reused, downloaded = _expected_reuse(pair.a, 1, 2)
    # The damaged shard's chunk is assembled from its pieces (issue 18): only
    # the piece holding the flipped byte crosses the wire.
    fetched = doc["bytes_downloaded"] - downloaded
    assert 0 < fetched <= 64 << 10
    assert doc["bytes_reused"] == reused - fetched
    assert doc["bytes_reused"] == (3 * MIB + 1) + (3 * MIB + 3) + 3 * MIB - fetched
    assert same_tree(ck, tmp_path / "v2")

    # The unchanged shards were hard-linked from B's v1 copy, not copied; the
    # damaged one was not (its hash check through the link failed).
    def ino(p: Path) -> int:
        return p.stat().st_ino

    for shard in ("shard-1.bin", "shard-3.bin"):
        assert ino(tmp_path / "v2" / shard) == ino(tmp_path / "v1" / shard)
    assert ino(tmp_path / "v2" / "shard-0.bin") != ino(tmp_path / "v1" / "shard-0.bin")
    shutil.rmtree(tmp_path / "v1")  # a vanished copy is skipped too
    doc = _pull(pair, a.addr, 2, tmp_path / "v2-again")
    assert doc["bytes_reused"] == doc["bytes_total"]  # all of it from v2, B's other copy


def test_pulling_into_the_same_dest_updates_it_in_place(pair: Pair, tmp_path: Path) -> None:
    """`pull NAME -o ./ckpt` again after a new version: ckpt is swapped
    atomically for the new version, built from its own unchanged chunks;
    a destination we did not pull is still never overwritten."""
    ck = tmp_path / "ck"
    tensors = model(seed=4)
    _write_model(ck, tensors)
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "1")
    a = pair.serve_a()
    dest = tmp_path / "ckpt"
    _pull(pair, a.addr, 1, dest)
    name, data = tensors[0]
    tensors[0] = (name, bytes(len(data)))
    _write_model(ck, tensors, meta="v2")
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "2")
    doc = _pull(pair, a.addr, 2, dest)
    reused, downloaded = _expected_reuse(pair.a, 1, 2)
    assert (doc["bytes_reused"], doc["bytes_downloaded"]) == (reused, downloaded) and reused
    assert same_tree(ck, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "ck", "ckpt", "serve-0.log"]
    rows = Home.open(pair.b).catalog.at_location(dest)
    assert [(r.name, r.version) for r in rows] == [(NAME, 2)]
    # A directory that is not our pulled copy of this name is left alone.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    proc = run(pair.b, "pull", NAME, "--from", a.addr, "-o", str(mine), check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (mine / "notes.txt").read_text() == "keep me\n"


def test_an_in_place_update_never_deletes_files_it_did_not_pull(pair: Pair, tmp_path: Path) -> None:
    """Someone added notes to our pulled copy: the update is refused rather
    than swapping their file away with the old version."""
    ck = tmp_path / "ck"
    _write_model(ck, model(seed=6))
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "1")
    a = pair.serve_a()
    dest = tmp_path / "ckpt"
    _pull(pair, a.addr, 1, dest)
    (dest / "NOTES.md").write_text("eval results\n")
    _write_model(ck, model(seed=6), meta="v2")
    run(pair.a, "publish", str(ck), "--name", NAME, "--version", "2")
    proc = run(pair.b, "pull", f"{NAME}@2", "--from", a.addr, "-o", str(dest), check=False)
    assert proc.returncode != 0 and "NOTES.md" in proc.stderr
    assert (dest / "NOTES.md").read_text() == "eval results\n"
