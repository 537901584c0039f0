#!/usr/bin/env python3
"""Loopback transfer benchmark: p2pckpt against scp, rsync and a raw socket copy.

What is measured, in one run and on the same bytes
---------------------------------------------------
A sharded safetensors checkpoint (``model-0000K-of-0000N.safetensors`` with valid
headers, ``model.safetensors.index.json``, ``config.json``) of ``--size`` bytes is
generated once into the work directory: one 64 MiB ``os.urandom`` block, permuted
differently for every 64 MiB, so no two chunks dedupe under BLAKE3. Everything runs
warm, from the page cache: one untimed warm-up copy per tool, then ``--repeat`` timed
copies (the table shows the median), each into a fresh destination that is removed
and ``sync``-ed, untimed, afterwards.

* ``raw loopback``, the ceiling: a Python sender ``sendfile``-s every file over one
  TCP connection on 127.0.0.1, a receiver ``recv_into``-s a 1 MiB buffer and
  ``write``-s. ``+fsync`` fsyncs every received file, as a durable puller (p2pckpt
  renames a verified, fsynced copy into place) must and scp/rsync do not.
* ``scp`` and ``rsync`` download ``USER@127.0.0.1:SRC`` through our own ``sshd``
  (temporary config and keys, free port, ``UsePAM no``, ``internal-sftp``: OpenSSH
  >= 9 scp speaks SFTP) with ssh's default cipher, reported from ``ssh -G`` and
  ``ssh -v``. rsync is plain ``rsync -a -e ssh`` (no ``-z``, no ``--fsync``).
* ``p2pckpt``: homes A and B trust each other; ``publish --json`` on A (its
  ``bytes``/``seconds`` give the hashing rate), ``serve --listen 127.0.0.1:0
  --no-mdns`` on A, then ``pull NAME --from 127.0.0.1:PORT -o DEST --streams N
  --json`` from B for each ``--streams`` N, each pull from a fresh copy of B's
  pristine home so nothing is reused (``bytes_downloaded < bytes_total`` is flagged).

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
* CPU s/GB = (client + server CPU s) / (bytes / 1e9); 1 MB = 1e6 bytes; RSS in MiB.

Targets (from the issue): pull throughput >= 1.5x scp and >= 1.2x rsync, pull CPU
s/GB (both sides) <= rsync's, peak RSS < 200 MiB per p2pckpt process, publish hashing
>= 1 GB/s. A MISS does not change the exit status; 1 means a measurement failed, 2
bad usage. Missing sshd/scp/rsync are installed with apt-get when root (with a
temporary ``policy-rc.d`` so the system sshd is not started). Every subprocess has a
timeout; started processes and temporary files are cleaned up on exit, errors and
SIGTERM.

Usage::

    python scripts/bench_transfer.py                      # 2 GiB, 3 repeats
    python scripts/bench_transfer.py --size 256MiB --repeat 1 --skip-p2pckpt
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

from bench import BenchError, checkpoint, log, p2p, procs, raw, report, sshd
from bench.procfs import SystemCpu
from bench.results import Job, ToolResult
from bench.units import GIB, KIB, MB, MIB, human_bytes

_SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", 1):
    _SIZE_UNITS |= {_prefix: KIB**_power, f"{_prefix}ib": KIB**_power, f"{_prefix}b": 1000**_power}

# Hidden first arguments: the helper processes run this same script.
HELPERS: dict[str, Callable[..., int]] = {
    "_raw_recv": raw.recv_main,
    "_raw_send": raw.send_main,
    "_generate": checkpoint.generate_main,
}


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
        help="checkpoint size, e.g. 2GiB (default), 512MiB, 1GB",
    )
    add("--repeat", type=int, default=3, help="timed runs per tool (default 3)")
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
    timeout = 120.0 + size / (20 * MB)  # generous: 20 MB/s floor plus set-up
    workdir: Path | None = None
    ours = False
    scratch: Path | None = None
    tools: dict[str, ToolResult] = {}
    p2p_res: p2p.P2pResults | None = None
    env_info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "peak_rss_method": "GNU time %M of the client command"
        if procs.GNU_TIME
        else "wait4 ru_maxrss (floor = this script's own peak RSS)",
    }
    failed = False
    try:
        env_info["busy_before_start"] = idle_share()
        workdir, ours = choose_workdir(args.workdir, 3 * size + 512 * MIB)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
        ckpt = checkpoint.prepare_checkpoint(workdir, size)
        files = checkpoint.checkpoint_files(ckpt)
        nbytes = sum(s for _, s in files)
        ckpt_info = {
            "path": str(ckpt),
            "files": len(files),
            "bytes": nbytes,
            "requested_size": size,
        }
        job = Job(ckpt, nbytes, scratch, args.repeat, timeout)
        if not args.skip_raw:
            tools["raw"] = raw.bench_raw(job, fsync=False)
            tools["raw+fsync"] = raw.bench_raw(job, fsync=True)
        if not args.skip_ssh:
            ssh_tools, ssh_info = sshd.bench_scp_rsync(job)
            tools.update(ssh_tools)
            if ssh_info is not None:
                env_info["ssh"] = ssh_info
        if not args.skip_p2pckpt:
            p2p_res = p2p.bench_p2pckpt(job, args.p2pckpt_bin, args.streams)

        targets = report.evaluate_targets(tools, p2p_res)
        results = list(tools.values()) + (list(p2p_res.pulls.values()) if p2p_res else [])
        failed = any(t.error for t in results) or (
            p2p_res is not None and p2p_res.error is not None
        )
        text = report.render(ckpt_info, env_info, tools, p2p_res, targets, args.repeat)
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            config = {"size": size, "repeat": args.repeat, "streams": args.streams}
            doc = report.json_report(ckpt_info, env_info, config, tools, p2p_res, targets)
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
