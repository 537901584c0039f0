"""The harness itself: v0.1.0 is its own copy, and a clone without it fails."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.compat import release
from tests.compat.release import ROOT, Release, ReleaseMissing

pytestmark = pytest.mark.compat

PROBE = (
    "import importlib.util, p2pckpt;"
    "print(p2pckpt.__file__);"
    "print(importlib.util.find_spec('p2pckpt.pairing') is not None)"  # new since v0.1.0
)


def _probe(rel: Release) -> list[str]:
    """Where ``rel``'s interpreter finds p2pckpt, run from the repository
    root with PYTHONPATH at it (the worst case for the old release)."""
    python, *flags = rel.cli[: rel.cli.index("-m")]
    proc = subprocess.run(
        [python, *flags, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_each_release_runs_its_own_code(old: Release, new: Release) -> None:
    old_file, old_pairing = _probe(old)
    new_file, new_pairing = _probe(new)
    assert old_file.startswith(str(old.where / "venv")), old_file
    assert new_file.startswith(str(ROOT)), new_file
    assert (old_pairing, new_pairing) == ("False", "True")


def test_a_clone_without_the_release_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the tag nor the commit: an error that says what to fetch (never a skip)."""
    monkeypatch.setattr(release, "RELEASE_TAG", "v0.1.0-not-here")
    monkeypatch.setattr(release, "RELEASE_COMMIT", "0" * 40)
    with pytest.raises(ReleaseMissing, match="fetch-depth: 0"):
        release.release_commit()


def test_a_moved_tag_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "RELEASE_TAG", "HEAD")  # not the released commit
    with pytest.raises(ReleaseMissing, match="was moved"):
        release.release_commit()


def test_the_release_is_found_by_its_commit_without_the_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(release, "RELEASE_TAG", "v0.1.0-not-here")
    assert release.release_commit().startswith(release.RELEASE_COMMIT)
