"""The Python API from a training script's point of view (real seeder process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.nodes import Pair, same_tree

SCRIPT = """
import sys, p2pckpt
from pathlib import Path
home_a, home_b, ckdir, dest, addr = sys.argv[1:6]
m = p2pckpt.publish(Path(ckdir) / "step-1200", name="llama-ft", home=home_a,
                    meta={"loss": "1.25"})
print("published", m.name, m.version)
"""

PULL = """
import sys, p2pckpt
from p2pckpt.errors import NotFound
home_b, dest, addr = sys.argv[1:4]
r = p2pckpt.pull("llama-ft", dest, sources=[addr], home=home_b)
print("pulled", r.version, r.bytes_total, r.peers[0]["route"])
try:
    p2pckpt.pull("nope", dest + "-x", sources=[addr], home=home_b)
except NotFound as exc:
    print("not found:", exc)
"""


def test_publish_and_pull_from_python(pair: Pair, tmp_path: Path) -> None:
    """publish() takes the step from the caller; pull() verifies; errors are ours."""
    step = tmp_path / "ck" / "step-1200"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (step / "config.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(pair.a), str(pair.b), str(tmp_path / "ck"), "", ""],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["published", "llama-ft", "1"]
    server = pair.serve_a()
    dest = tmp_path / "got"
    out = subprocess.run(
        [sys.executable, "-c", PULL, str(pair.b), str(dest), server.addr],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0] == f"pulled 1 {(3 << 20) + 2} direct"
    assert lines[1].startswith("not found:")
    assert same_tree(step, dest)


def test_import_is_cheap() -> None:
    """`import p2pckpt` loads neither trio nor cryptography (the CLI starts fast)."""
    probe = "import sys, p2pckpt; print('trio' in sys.modules, 'cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
