"""A short, deterministic run of every fuzz harness (the long run is scripts/fuzz.py).

In-process, with the seeded mutator of ``mutate.py`` rather than atheris:
``atheris.Fuzz()`` never returns and instruments imports, which would need a
process per harness and seconds of start-up each. One test drives the real
script under atheris briefly, so the long run cannot rot unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import registry
from tests.fuzz.mutate import mutants

MUTANTS = 3000  # per harness: about 5 s for all of them on a 2-core machine
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(registry.MODULES))
def test_harness_survives_seeds_and_mutants(name: str) -> None:
    """Every seed and mutant is either accepted or refused as the contract says."""
    harness = registry.load(name)
    seeds = harness.seeds()
    assert seeds and all(len(s) <= harness.max_len for s in seeds)
    for data in [*seeds, *mutants(seeds, MUTANTS, seed=13)]:
        try:
            harness.one_input(data)
        except Exception as exc:
            raise AssertionError(f"{name} finding on {data[:200]!r}: {exc!r}") from exc


def test_script_runs_atheris(tmp_path: Path) -> None:
    """scripts/fuzz.py fuzzes with atheris, counts the inputs and reports no finding."""
    if importlib.util.find_spec("atheris") is None:  # not imported here: it loads libFuzzer
        pytest.skip("atheris is not installed")
    argv = ["scripts/fuzz.py", "--runs", "300", "--only", "journal,relay", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["harness"], r["inputs"], r["findings"]) for r in summary] == [
        ("journal", 300, []),
        ("relay", 300, []),
    ]
    assert all(r["cov"] for r in summary)  # coverage-guided: instrumentation worked
