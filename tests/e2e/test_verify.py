"""`p2pckpt verify` (issue 7): a local copy against its signed manifest."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.nodes import Pair, make_checkpoint, run

MIB = 1 << 20


def test_verify_names_every_file_and_chunk_that_differs(pair: Pair, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ck", {"w.bin": 9 * MIB, "b.bin": MIB, "c.json": 10})
    run(pair.a, "publish", str(ckpt), "--name", "v", "--version", "3")
    a = pair.serve_a()
    dest = tmp_path / "copy"
    run(pair.b, "pull", "v", "--from", a.addr, "-o", str(dest))
    ok = run(pair.b, "verify", str(dest))
    assert ok.stdout.startswith(f"ok: {dest} matches v@3")
    # A flipped byte in chunk 1 of w.bin (bytes 4 MiB..8 MiB), b.bin gone, a stray file.
    with open(dest / "w.bin", "r+b") as f:
        f.seek(5 * MIB + 17)
        byte = f.read(1)
        f.seek(5 * MIB + 17)
        f.write(bytes([byte[0] ^ 1]))
    (dest / "b.bin").unlink()
    (dest / "stray.txt").write_text("x")
    bad = run(pair.b, "verify", str(dest), check=False)
    assert bad.returncode == 9, bad.stderr
    lines = bad.stdout.splitlines()
    assert "missing: b.bin" in lines and "extra: stray.txt" in lines
    assert f"damaged: w.bin: 1 of 3 chunks differ: chunk 1 (bytes {4 * MIB}-{8 * MIB - 1})" in lines
    doc = json.loads(run(pair.b, "verify", str(dest), "v@3", "--json", check=False).stdout)
    assert doc["ok"] is False and doc["missing"] == ["b.bin"] and list(doc["damaged"]) == ["w.bin"]
    # The publisher's own original matches, named explicitly; an unknown path is exit 3.
    assert run(pair.a, "verify", str(ckpt), "v@3").returncode == 0
    unknown = run(pair.b, "verify", str(tmp_path / "ck"), check=False)
    assert unknown.returncode == 3 and "name the version" in unknown.stderr
