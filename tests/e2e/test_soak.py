"""A short soak (the long one is ``scripts/soak.py``): pulls of one real seeder
ended at random (SIGKILL, SIGINT, a reset connection, a reader that stops
reading) with pre-auth floods; afterwards a fresh pull completes at about
the same speed and the seeder's RSS and open fds are at their baseline."""

from __future__ import annotations

from pathlib import Path

from scripts.soak import soak


def test_a_short_soak_leaves_the_seeder_as_good_as_new(tmp_path: Path) -> None:
    report = soak(tmp_path, pulls=24, concurrency=4, size=16 << 20, seed=7)
    print("\n" + "\n".join(report.lines()))
    assert sum(report.endings.values()) == 24
    assert report.ok, report.problems
