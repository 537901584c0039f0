"""One tool's timed runs: warm-up and repeats into fresh destinations, and their statistics."""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import BenchError, log
from .cache import drop_caches
from .checkpoint import checkpoint_files
from .units import GB, KIB, MB


@dataclass(frozen=True)
class Job:
    """What every tool's benchmark gets: the checkpoint, where to copy it, how often."""

    ckpt: Path
    nbytes: int
    scratch: Path
    repeat: int
    timeout: float
    cold: bool = False  # drop the page cache before every run (warm-up included)
    warmup: bool = True  # one untimed run first


@dataclass
class Run:
    wall: float
    cpu_client: float
    cpu_server: float
    rss_client_kib: int
    rss_server_kib: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    label: str
    nbytes: int
    runs: list[Run] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    family: str = ""  # "scp", "rsync", "raw", "p2pckpt": variants of one tool share it

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.median_s

    def cpu_per_gb(self, part: str = "total") -> float:
        def pick(r: Run) -> float:
            return {"client": r.cpu_client, "server": r.cpu_server}.get(
                part, r.cpu_client + r.cpu_server
            )

        return statistics.median(pick(r) for r in self.runs) / (self.nbytes / GB)

    def system_median(self, key: str) -> float:
        """Median over the timed runs of a machine-wide CPU share (busy, iowait, steal)."""
        values = [r.extra["system"][key] for r in self.runs if "system" in r.extra]
        return statistics.median(values) if values else float("nan")

    def other_share(self) -> float:
        """Median share of the machine's CPU used by processes we did not measure (noise)."""
        cpus = os.cpu_count() or 1
        values = [
            max(0.0, r.extra["system"]["busy_cpu_seconds"] - r.cpu_client - r.cpu_server)
            / (r.wall * cpus)
            for r in self.runs
            if "system" in r.extra
        ]
        return statistics.median(values) if values else float("nan")

    @property
    def rss_client_mib(self) -> float:
        return max(r.rss_client_kib for r in self.runs) / KIB

    @property
    def rss_server_mib(self) -> float:
        return max(r.rss_server_kib for r in self.runs) / KIB

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "family": self.family, "bytes": self.nbytes}
        out.update(error=self.error, notes=self.notes)
        if self.ok:
            out.update(
                median_seconds=self.median_s,
                min_seconds=min(r.wall for r in self.runs),
                max_seconds=max(r.wall for r in self.runs),
                mb_per_s=self.mbps,
                cpu_s_per_gb=self.cpu_per_gb(),
                cpu_s_per_gb_client=self.cpu_per_gb("client"),
                cpu_s_per_gb_server=self.cpu_per_gb("server"),
                peak_rss_mib_client=self.rss_client_mib,
                peak_rss_mib_server=self.rss_server_mib,
            )
        out["runs"] = [r.__dict__ for r in self.runs]
        return out


def repeat_runs(
    result: ToolResult, job: Job, what: str, measure: Callable[[Path, str], Run]
) -> ToolResult:
    """One untimed warm-up then ``job.repeat`` timed runs of ``measure(dest, tag)``, each
    into a fresh destination that is checked and removed; errors go to ``result.error``.
    With ``job.cold`` the page cache is dropped before each (warm-up included)."""
    try:
        for i in range(0 if job.warmup else 1, job.repeat + 1):
            dest = _fresh_dest(job.scratch, f"{_slug(result.label)}-{i}")
            try:
                if job.cold:
                    drop_caches()
                r = measure(dest, f"{i}")
                _check_copy(dest, job.nbytes, what)
            finally:
                _clear_dest_parent(dest.parent)
            tag = "warm-up" if i == 0 else f"run {i}/{job.repeat}"
            log(
                f"{what} {tag}: {r.wall:.3f} s, {result.nbytes / MB / r.wall:.1f} MB/s, "
                f"cpu {r.cpu_client:.2f}+{r.cpu_server:.2f} s"
            )
            if i:
                result.runs.append(r)
    except BenchError as exc:
        result.error = str(exc)
        log(f"{what} FAILED: {exc}")
    return result


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _fresh_dest(scratch: Path, tag: str) -> Path:
    """A destination path ``.../dst-TAG/ckpt`` whose parent is new and empty."""
    parent = scratch / f"dst-{tag}"
    _clear_dest_parent(parent)
    parent.mkdir(parents=True)
    return parent / "ckpt"


def _clear_dest_parent(parent: Path) -> None:
    """Remove a destination's parent: the copy and any hidden partial beside it."""
    if parent.exists():
        shutil.rmtree(parent)
    os.sync()  # untimed: don't let writeback of the last copy leak into the next one


def _check_copy(dest: Path, expected: int, what: str) -> None:
    got = sum(size for _, size in checkpoint_files(dest)) if dest.exists() else -1
    if got != expected:
        raise BenchError(f"{what}: destination holds {got} bytes, expected {expected}")
