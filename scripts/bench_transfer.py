#!/usr/bin/env python3
"""Loopback transfer benchmark: p2pckpt against scp, rsync and a raw socket copy.

What is measured, in one run and on the same bytes
---------------------------------------------------
Checkpoint shapes (``--shapes``, default ``single,sharded``), generated once into the
work directory from one 64 MiB ``os.urandom`` block, permuted differently for every
64 MiB, so no two chunks dedupe under BLAKE3:

* ``single``: one ``model.safetensors`` (valid header) of ``--size`` bytes;
* ``sharded``: 4 shards ``model-0000K-of-00004.safetensors`` of ``--size``/4 each,
  ``model.safetensors.index.json`` and ``config.json``;
* ``many`` (optional): 10,000 files of 2-18 KB (~100 MB in all) in 100 folders.

For each shape: one untimed warm-up per tool, then ``--repeat`` (default 5) timed copies
(the table shows the median and min-max), each into a fresh destination that is removed
and ``sync``-ed, untimed, afterwards. ``--cold`` (root): ``sync; echo 3 >
/proc/sys/vm/drop_caches`` before every run of every tool, the warm-up and every
publish included, so the sender reads from disk (the clients' own binaries and Python
modules are dropped too, so start-up is cold as well). Without it the cache is warm.

* ``raw loopback``, the ceiling: a Python sender ``sendfile``-s every file over one
  TCP connection on 127.0.0.1, a receiver ``recv_into``-s a 1 MiB buffer and
  ``write``-s. ``+fsync`` fsyncs every received file, as a durable puller (p2pckpt
  renames a verified, fsynced copy into place) must and scp/rsync do not.
* ``scp [CIPHER]`` and ``rsync [CIPHER]`` download ``USER@127.0.0.1:SRC`` through our own
  ``sshd`` (temporary config and keys, free port, ``UsePAM no``, ``internal-sftp``:
  OpenSSH >= 9 scp speaks SFTP), once per ``--ciphers`` entry (default
  ``aes128-gcm@openssh.com,default``): ``scp -c CIPHER`` and ``rsync -a -e 'ssh -c
  CIPHER'``; ``default`` passes no ``-c``. The negotiated cipher is checked with
  ``ssh -v``. rsync has no ``-z`` and no ``--fsync``. Each variant is its own row; the
  fastest variant of each tool is marked ``*`` and p2pckpt's targets use it.
* ``p2pckpt``: homes A and B trust each other; ``publish --json`` on A (untimed set-up),
  then ``--repeat`` timed publishes with the page cache dropped (cold) and ``--repeat``
  warm, each into a fresh copy of the initialised home A, shown as GB/s beside the
  ``dd`` cold read rate; ``serve --listen 127.0.0.1:0 --no-mdns`` on A, then ``pull NAME
  --from 127.0.0.1:PORT -o DEST --streams N --json`` from B for each ``--streams`` N,
  each pull from a fresh copy of B's pristine home so nothing is reused
  (``bytes_downloaded < bytes_total`` is flagged).
* Limits, measured in the same run (``--skip-limits`` to skip): ``dd if=/dev/zero
  of=FILE bs=4M count=N conv=fsync`` (``--size`` bytes) = durable write rate; ``dd`` of
  the largest checkpoint file after dropping caches = the disk's read rate; AES-128-GCM
  and AES-256-GCM single-core rates (``cryptography``'s AESGCM over 64 KiB and 1 MiB
  records) and BLAKE3 on one thread and all threads (``blake3``), in a helper process.
* ``--flat-sizes 1GiB,16GiB``: p2pckpt only, one ``single`` file per size: publish cold
  and warm and one pull (no warm-up), with peak RSS of publish, serve and pull side by
  side, to show memory does not grow with the file. A size needing more disk than is
  free (file + pulled copy + 1 GiB, checked with ``shutil.disk_usage``) is skipped with
  a message; checkpoints generated for it are removed afterwards.

How time, CPU and memory are counted
------------------------------------
* Wall time: from just before the client starts until it (and, for raw, the
  receiver) has exited; ssh set-up and Python start-up are included.
* Client CPU: ``os.wait4`` user+sys of the client and every descendant it reaped
  (scp + ssh; rsync + forks + ssh; the pull; the raw receiver, and likewise the
  raw sender, which stands in for the server).
* Client peak RSS: GNU time's ``%M`` (the command runs under ``/usr/bin/time``);
  without it ``wait4``'s ``ru_maxrss``, which on Linux starts at the parent's
  high-water mark, so the checkpoint is generated in a child process.
* Server CPU: ``utime+stime+cutime+cstime`` from ``/proc`` of the server and its
  live descendants, before and after each copy: for sshd the per-connection sshd,
  internal-sftp and ``rsync --server`` reaped into the listener (we wait until it
  has no children left); for ``p2pckpt serve`` the process (all threads).
* Server peak RSS: ``VmHWM`` from ``/proc/PID/status``; for serve read after each
  pull (its high-water mark so far), for sshd the largest seen sampling the
  listener's descendants every 200 ms (a sampled lower bound).
* Noise: machine-wide busy and iowait shares during each timed copy, from
  ``/proc/stat``; "other" is the busy share of processes not measured here. On a
  small VM wall times varied up to 2x between identical runs at constant CPU
  seconds: check the min-max column and use a larger ``--repeat``.
* CPU s/GB per side = client (or server) CPU s / (bytes / 1e9); 1 MB = 1e6 bytes; RSS
  in MiB. Ratios: speed-up = baseline median time / p2pckpt's; CPU ratio = p2pckpt's
  CPU s/GB / the baseline's, per side.

Targets (from the issue): pull >= 1.5x faster than the fastest scp variant and >= 1.2x
than the fastest rsync variant; pull CPU s/GB per side <= the lowest rsync variant's on
that side; peak RSS < 80 MiB per p2pckpt process (pull, serve, publish); warm publish
hashing >= 1 GB/s. A MISS does not change the exit status; 1 means a measurement failed,
2 bad usage. Missing sshd/scp/rsync are installed with apt-get when root (with a
temporary ``policy-rc.d`` so the system sshd is not started). Every subprocess has a
timeout; started processes and temporary files are cleaned up on exit, errors and
SIGTERM.

Usage::

    python scripts/bench_transfer.py                      # 2 GiB, single+sharded, 5 repeats
    python scripts/bench_transfer.py --size 256MiB --repeat 1 --cold --shapes single,sharded,many
    python scripts/bench_transfer.py --size 1GiB --repeat 3 --cold --flat-sizes 1GiB,16GiB
    python scripts/bench_transfer.py --streams 1,2,4 --json > result.json

With ``--json`` the tables go to stderr and stdout holds one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside us

from bench import BenchError, cache, checkpoint, flat, limits, log, p2p, procs, raw, sshd
from bench.procfs import SystemCpu
from bench.report import ShapeResult, evaluate_targets, json_report, render
from bench.results import Job
from bench.units import GIB, KIB, MB, MIB, human_bytes

_SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", 1):
    _SIZE_UNITS |= {_prefix: KIB**_power, f"{_prefix}ib": KIB**_power, f"{_prefix}b": 1000**_power}

# Hidden first arguments: the helper processes run this same script.
HELPERS: dict[str, Callable[..., int]] = {
    "_raw_recv": raw.recv_main,
    "_raw_send": raw.send_main,
    "_generate": checkpoint.generate_main,
    "_cpu_rates": limits.cpu_rates_main,
}
DEFAULT_CIPHERS = "aes128-gcm@openssh.com,default"


def parse_size(text: str) -> int:
    """Parse ``2GiB``, ``512MiB``, ``1.5GB``, ``1048576`` into bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 2GiB, 512MiB, 1GB)")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if value < MIB:
        raise argparse.ArgumentTypeError("size must be at least 1MiB")
    return value


def parse_streams(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --streams {text!r} (e.g. 4 or 1,2,4)") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--streams values must be >= 1")
    return list(dict.fromkeys(values))


def parse_list(text: str) -> list[str]:
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def parse_shapes(text: str) -> list[str]:
    shapes = parse_list(text)
    bad = [s for s in shapes if s not in checkpoint.SHAPES]
    if not shapes or bad:
        raise argparse.ArgumentTypeError(
            f"bad --shapes {text!r}: choose from {','.join(checkpoint.SHAPES)}"
        )
    return shapes


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in parse_list(text)]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark p2pckpt pull against scp, rsync and a raw loopback copy.",
        epilog="See the module docstring for what exactly is counted.",
    )
    add = p.add_argument
    add(
        "--size",
        type=parse_size,
        default=2 * GIB,
        help="checkpoint size of the single and sharded shapes, e.g. 2GiB (default), 512MiB",
    )
    add("--repeat", type=int, default=5, help="timed runs per tool (default 5)")
    add(
        "--shapes",
        type=parse_shapes,
        default=["single", "sharded"],
        help="checkpoint shapes: single (one model.safetensors), sharded (4 shards + index + "
        "config.json), many (10,000 small files, ~100 MB); default single,sharded",
    )
    add(
        "--cold",
        action="store_true",
        help="drop the page cache (sync; echo 3 > /proc/sys/vm/drop_caches, needs root) "
        "before every run of every tool, warm-ups and publishes included",
    )
    add(
        "--ciphers",
        type=parse_list,
        default=parse_list(DEFAULT_CIPHERS),
        help="ssh ciphers for scp -c / rsync -e 'ssh -c', one row each; 'default' = no -c "
        f"(default {DEFAULT_CIPHERS})",
    )
    add(
        "--flat-sizes",
        type=parse_sizes,
        default=[],
        help="also publish + pull (p2pckpt only) one file of each size, e.g. 1GiB,16GiB, and "
        "show peak RSS side by side (a size that does not fit on disk is skipped)",
    )
    add("--skip-limits", action="store_true", help="skip the dd / AES-GCM / BLAKE3 limits")
    add(
        "--streams",
        type=parse_streams,
        default=[4],
        help="p2pckpt pull --streams, a number or a list like 1,2,4 (default 4)",
    )
    add("--skip-ssh", action="store_true", help="skip the scp and rsync baselines")
    add("--skip-p2pckpt", action="store_true", help="skip p2pckpt (baselines only)")
    add("--skip-raw", action="store_true", help="skip the raw loopback ceiling")
    add(
        "--workdir",
        type=Path,
        default=None,
        help="where to generate the checkpoint (kept there "
        "for reuse) and scratch files (removed); default: a temporary dir under /var/tmp or /tmp",
    )
    add(
        "--p2pckpt-bin",
        type=Path,
        default=Path(sys.executable).parent / "p2pckpt",
        help="p2pckpt console script (default: next to sys.executable)",
    )
    add("--json", action="store_true", help="print one JSON object on stdout (tables go to stderr)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.cold and (why := cache.can_drop()) is not None:
        p.error(f"--cold needs to drop the page cache: {why}")
    if not args.ciphers:
        p.error("--ciphers needs at least one cipher (or 'default')")
    return args


def choose_workdir(arg: Path | None, need: int) -> tuple[Path, bool]:
    """The work directory and whether it is ours (temporary) to delete at exit."""
    if arg is not None:
        arg.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(arg).free
        if free < need:
            raise BenchError(f"{arg}: {human_bytes(free)} free, need {human_bytes(need)}")
        return arg.resolve(), False
    candidates = ["/var/tmp", tempfile.gettempdir()]  # noqa: S108 -- mkdtemp below is safe
    best = max(dict.fromkeys(candidates), key=lambda d: shutil.disk_usage(d).free)
    free = shutil.disk_usage(best).free
    if free < need:
        raise BenchError(
            f"not enough space: {best} has {human_bytes(free)} free, "
            f"need {human_bytes(need)}; pass --workdir or a smaller --size"
        )
    return Path(tempfile.mkdtemp(prefix="p2pckpt-bench-", dir=best)), True


def idle_share() -> float:
    """The machine's CPU busy share over one second before we start, with a warning."""
    with SystemCpu() as idle_check:
        time.sleep(1.0)
    busy: float = idle_check.result["busy"]
    if busy > 0.2:
        log(
            f"WARNING: the machine is {100 * busy:.0f}% busy before the benchmark starts; "
            "results will be noisy (see the 'other' column)"
        )
    return busy


def shape_bytes(shape: str, size: int) -> int:
    return checkpoint.MANY_BYTES if shape == "many" else size


def bench_shape(
    args: argparse.Namespace, shape: str, ckpt: Path, scratch: Path, env_info: dict[str, Any]
) -> ShapeResult:
    """Every tool on one checkpoint shape, with its own scratch directory (removed after)."""
    scratch = scratch / f"shape-{shape}"
    scratch.mkdir()
    try:
        return _bench_shape(args, shape, ckpt, scratch, env_info)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bench_shape(
    args: argparse.Namespace, shape: str, ckpt: Path, scratch: Path, env_info: dict[str, Any]
) -> ShapeResult:
    files = checkpoint.checkpoint_files(ckpt)
    nbytes = sum(s for _, s in files)
    info = {"shape": shape, "path": str(ckpt), "files": len(files), "bytes": nbytes}
    info["requested_size"] = args.size
    res = ShapeResult(shape, info)
    timeout = 120.0 + nbytes / (20 * MB) + 0.05 * len(files)  # 20 MB/s floor plus set-up
    job = Job(ckpt, nbytes, scratch, args.repeat, timeout, cold=args.cold)
    log(f"=== shape {shape}: {len(files)} files, {human_bytes(nbytes)}")
    if not args.skip_raw:
        res.tools["raw loopback"] = raw.bench_raw(job, fsync=False)
        res.tools["raw loopback +fsync"] = raw.bench_raw(job, fsync=True)
    if not args.skip_ssh:
        ssh_tools, ssh_info = sshd.bench_scp_rsync(job, args.ciphers)
        res.tools.update(ssh_tools)
        if ssh_info is not None:
            env_info.setdefault("ssh", ssh_info)
    if not args.skip_p2pckpt:
        res.p2p = p2p.bench_p2pckpt(job, args.p2pckpt_bin, args.streams)
    res.targets = evaluate_targets(res.tools, res.p2p)
    return res


def failed_any(shapes: list[ShapeResult], flat_res: list[dict[str, Any]]) -> bool:
    for s in shapes:
        if any(t.error for t in s.rows()) or (s.p2p is not None and s.p2p.error is not None):
            return True
    return any("error" in f for f in flat_res)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELPERS:
        return HELPERS[argv[0]](*argv[1:])
    args = parse_args(argv)

    def _on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    size: int = args.size
    workdir: Path | None = None
    ours = False
    scratch: Path | None = None
    env_info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "peak_rss_method": "GNU time %M of the client command"
        if procs.GNU_TIME
        else "wait4 ru_maxrss (floor = this script's own peak RSS)",
    }
    config = {
        "size": size,
        "repeat": args.repeat,
        "streams": args.streams,
        "shapes": args.shapes,
        "cold": args.cold,
        "ciphers": args.ciphers,
        "flat_sizes": args.flat_sizes,
    }
    shapes: list[ShapeResult] = []
    flat_res: list[dict[str, Any]] = []
    lim: dict[str, Any] = {}
    failed = False
    try:
        env_info["busy_before_start"] = idle_share()
        ckpt_bytes = sum(shape_bytes(s, size) for s in args.shapes)
        workdir, ours = choose_workdir(args.workdir, ckpt_bytes + size + 512 * MIB)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
        ckpts = {s: checkpoint.prepare_checkpoint(workdir, size, s) for s in args.shapes}
        if not args.skip_limits:
            biggest = max(
                (
                    ckpt / rel
                    for ckpt in ckpts.values()
                    for rel, _ in checkpoint.checkpoint_files(ckpt)
                ),
                key=lambda f: f.stat().st_size,
            )
            lim = limits.measure_limits(scratch, biggest, size)
        for shape, ckpt in ckpts.items():
            shapes.append(bench_shape(args, shape, ckpt, scratch, env_info))
        if args.flat_sizes and not args.skip_p2pckpt:
            keep = set(ckpts.values())
            flat_res = flat.bench_flat(
                workdir,
                scratch,
                args.flat_sizes,
                args.p2pckpt_bin,
                args.streams[0],
                args.cold,
                keep,
            )
        failed = failed_any(shapes, flat_res)
        text = render(env_info, config, shapes, lim, flat_res)
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            doc = json_report(env_info, config, shapes, lim, flat_res)
            print(json.dumps(doc, indent=2, default=str))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        failed = True
    finally:
        procs.stop_all()
        target = workdir if ours else scratch
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
            log(f"removed {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
