"""Flat memory: p2pckpt publish and pull of one ``single``-shape file per ``--flat-sizes``
size, to show that peak RSS of publish, serve and pull does not grow with the file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import log
from .checkpoint import checkpoint_files, prepare_checkpoint
from .p2p import bench_p2pckpt
from .results import Job
from .units import GIB, MB, human_bytes

MARGIN = 1 * GIB


def bench_flat(
    workdir: Path,
    scratch: Path,
    sizes: list[int],
    exe: Path,
    streams: int,
    cold: bool,
    keep: set[Path],
) -> list[dict[str, Any]]:
    """One entry per size: publish cold/warm and one pull (no warm-up); a size that does not
    fit on the disk (the file plus the pulled copy plus 1 GiB) is skipped with a message.
    Checkpoints generated here are removed afterwards unless they are in ``keep``."""
    out: list[dict[str, Any]] = []
    for size in sizes:
        entry: dict[str, Any] = {"size": size}
        out.append(entry)
        stem = workdir / f"ckpt-single-{size}"
        have = stem.is_dir() and (workdir / f"ckpt-single-{size}.done").exists()
        need = (1 if have else 2) * size + MARGIN
        free = shutil.disk_usage(workdir).free
        if free < need:
            entry["skipped"] = (
                f"needs {human_bytes(need)} free in {workdir} (file + pulled copy + 1 GiB), "
                f"has {human_bytes(free)}"
            )
            log(f"flat {human_bytes(size)} SKIPPED: {entry['skipped']}")
            continue
        ckpt = prepare_checkpoint(workdir, size, "single")
        sub = scratch / f"flat-{size}"
        sub.mkdir()
        try:
            nbytes = sum(s for _, s in checkpoint_files(ckpt))
            timeout = 300 + nbytes / (20 * MB)
            job = Job(ckpt, nbytes, sub, 1, timeout, cold=cold, warmup=False)
            log(f"flat {human_bytes(size)}: publish cold/warm and one pull --streams {streams}")
            res = bench_p2pckpt(job, exe, [streams])
            entry["bytes"] = nbytes
            entry["publish"] = res.publish
            pull = res.pulls.get(streams)
            if pull is not None:
                entry["pull"] = pull.to_json()
                if pull.error:
                    entry["error"] = pull.error
            if res.error:
                entry["error"] = res.error
        finally:
            shutil.rmtree(sub, ignore_errors=True)
            if ckpt not in keep:
                shutil.rmtree(ckpt, ignore_errors=True)
                (workdir / f"{ckpt.name}.done").unlink(missing_ok=True)
    return out
