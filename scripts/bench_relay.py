#!/usr/bin/env python3
"""Loopback relay benchmark: the same pull from one seeder, directly and through a relay.

What is measured, in one run and on the same bytes
---------------------------------------------------
The checkpoint of ``scripts/bench_transfer.py`` (``--size`` bytes of sharded safetensors,
non-dedupable, generated once and reused from ``--workdir``) is published by home A, which
runs ``serve --listen 127.0.0.1:0 --no-mdns --relay 127.0.0.1:RPORT`` beside ``p2pckpt
relay --listen 127.0.0.1:0``. Home B has mDNS off and the relay in its ``config.toml``.

* direct: ``pull NAME --from 127.0.0.1:PORT``; relayed: ``pull NAME --from A_PEER_ID``,
  which with no static address and no mDNS goes through the relay. The pull's JSON
  ``peers[*].route`` must be "direct" resp. "relay", and every byte must be downloaded
  (``bytes_downloaded == bytes_total``), or the benchmark fails.
* One warm-up of each, then ``--repeat`` rounds of direct, relayed (interleaved, so drift
  hits both); each pull from a fresh copy of B's home into a fresh destination that is
  checked, removed and ``sync``-ed, untimed. Page cache warm; the table shows medians.

How time, CPU and memory are counted
------------------------------------
* Wall time: the pull command from start to exit (set-up, handshakes, fsync included).
* Puller CPU: ``os.wait4`` user+sys; puller peak RSS: GNU time ``%M`` (see bench_transfer).
* Seeder and relay CPU: ``utime+stime+cutime+cstime`` deltas from ``/proc`` around each
  pull; their peak RSS is ``VmHWM``, reset before every pull through ``clear_refs`` (so it
  is the peak of that pull; if the kernel refuses, it is cumulative and the report says so).
* CPU s/GB = median CPU s / (bytes / 1e9); 1 MB = 1e6 bytes; RSS in MiB. The puller's
  sys share is shown in brackets.
* ``--settle`` (default 3 s): an untimed pause between removing one copy and the next
  pull. On a VM with virtio-balloon free page reporting, page cache freed by the removal
  is (most likely) returned to the host ~2 s later, and a pull writing into those pages
  stalls on host faults (~1.5-2 s sys per GiB in the puller's ``write``; perf shows
  ``copy_folio_from_iter_atomic``).
  Without a pause, whether a pull is hit depends on its set-up time, so one route could
  be hit more often than the other; with it every pull is hit alike. This adds the same
  seconds to both routes, pulling the ratio towards 1: ``--settle 0`` on bare metal.
* busy/other/iow%: machine-wide CPU busy share, the share used by processes not measured
  here (noise), iowait share, during the timed pulls (median, ``/proc/stat``).

Target: relayed MB/s >= 0.70 x direct MB/s. A MISS does not change the exit status;
1 means a measurement failed, 2 bad usage. Every subprocess has a timeout; started
processes and temporary files are cleaned up on exit, errors, Ctrl-C and SIGTERM.

Usage::

    python scripts/bench_relay.py                          # 1 GiB, 3 rounds, 2 streams
    python scripts/bench_relay.py --size 256MiB --repeat 5 --streams 4 --json > relay.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside us

from bench import BenchError, checkpoint, log, procs
from bench.relay import MODES, ModeResult, Rig, bench_interleaved
from bench.results import Job
from bench.units import GB, GIB, MB, MIB, human_bytes
from bench_transfer import choose_workdir, idle_share, parse_size

TARGET_RATIO = 0.70
PROCS = ("seeder", "puller", "relay")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark p2pckpt pull from one seeder, directly and through a relay.",
        epilog="See the module docstring for what exactly is counted.",
    )
    add = p.add_argument
    add("--size", type=parse_size, default=GIB, help="checkpoint size (default 1GiB)")
    add("--repeat", type=int, default=3, help="timed rounds of direct+relayed (default 3)")
    add("--streams", type=int, default=2, help="pull --streams (default 2)")
    add(
        "--workdir",
        type=Path,
        default=None,
        help="where to generate the checkpoint (kept there for reuse) and scratch files "
        "(removed); default: a temporary dir under /var/tmp or /tmp",
    )
    add(
        "--p2pckpt-bin",
        type=Path,
        default=Path(sys.executable).parent / "p2pckpt",
        help="p2pckpt console script (default: next to sys.executable)",
    )
    add("--settle", type=float, default=3.0, help="untimed pause before each pull (default 3 s)")
    add("--json", action="store_true", help="print one JSON object on stdout (table to stderr)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.settle < 0:
        p.error("--settle must be >= 0")
    if not 1 <= args.streams <= 16:
        p.error("--streams must be 1..16")
    return args


def ratio_target(res: dict[str, ModeResult]) -> dict[str, Any]:
    ratio = res["relay"].mbps / res["direct"].mbps
    status = "PASS" if ratio >= TARGET_RATIO else "MISS"
    return {"name": f"relayed/direct >= {TARGET_RATIO:.2f}", "value": ratio, "status": status}


def render(
    info: dict[str, Any], res: dict[str, ModeResult], target: dict[str, Any], rig: Rig
) -> str:
    nbytes, repeat = info["checkpoint"]["bytes"], info["config"]["repeat"]
    env = info["environment"]
    lines = [
        "",
        f"checkpoint: {info['checkpoint']['files']} files, {nbytes:,} bytes "
        f"({human_bytes(nbytes)}) at {info['checkpoint']['path']}",
        f"machine: {env['cpus']} CPUs, kernel {env['kernel']}, python {env['python']}; "
        f"CPU busy before start {100 * env['busy_before_start']:.0f}%",
        f"pull --streams {info['config']['streams']}; median of {repeat} interleaved timed "
        f"round(s) (direct, relayed) after 1 warm-up each, {info['config']['settle']:g} s "
        "settle before each; page cache warm; 1 MB = 1e6 bytes",
        f"relay 127.0.0.1:{rig.relay_port}, seeder 127.0.0.1:{rig.seed_port} (peer {rig.peer_a})",
        "",
    ]
    head = (
        f"{'route':<8}{'median s':>10}{'min-max s':>13}{'MB/s':>9}{'CPU s/GB seed':>15}"
        f"{'pull(sys)':>12}{'relay':>7}{'RSS MiB seed':>14}{'pull':>7}{'relay':>7}"
        f"{'busy/other/iow%':>17}"
    )
    lines += [head, "-" * len(head)]
    for mode in MODES:
        m = res[mode]
        walls = [r.wall for r in m.runs]
        rss = m.peak_rss_mib()
        busy, other, iowait = m.system()
        puller = f"{m.cpu_per_gb('puller'):.2f}({m.cpu_per_gb('puller_sys'):.2f})"
        lines.append(
            f"{mode:<8}{m.median('wall'):>10.3f}{f'{min(walls):.2f}-{max(walls):.2f}':>13}"
            f"{m.mbps:>9.1f}{m.cpu_per_gb('seeder'):>15.2f}"
            f"{puller:>12}"
            f"{m.cpu_per_gb('relay'):>7.2f}{rss['seeder']:>14.1f}{rss['puller']:>7.1f}"
            f"{rss['relay']:>7.1f}"
            f"{f'{100 * busy:.0f}/{100 * other:.0f}/{100 * iowait:.0f}':>17}"
        )
        own = [r.extra.get("pull_seconds") for r in m.runs]
        lines[-1] += f"   (pull's own seconds: {own})"
    noisy = [f"{m} {100 * res[m].system()[1]:.0f}%" for m in MODES if res[m].system()[1] > 0.1]
    if noisy:
        lines.append(f"WARNING: processes not measured here were busy ({', '.join(noisy)})")
    slow = {
        m: [round(r.extra["puller_sys"] / (nbytes / GB), 2) for r in res[m].runs] for m in MODES
    }
    if any(v > 1.0 for vs in slow.values() for v in vs):
        lines.append(
            f"note: puller sys s/GB per run {slow}; > 1.0 is the VM page-cache artifact "
            "(see --settle in the docstring)"
        )
    pub = rig.publish
    if pub:
        lines.append(
            f"publish: {pub['wall_seconds']:.2f} s, hashing "
            f"{pub.get('hash_gb_per_s', float('nan')):.2f} GB/s"
        )
    if not rig.per_run_rss:
        lines.append("note: VmHWM could not be reset; seeder/relay RSS are cumulative peaks")
    lines += [
        "",
        f"target: [{target['status']}] {target['name']:<28} {target['value']:.2f}x "
        f"({res['relay'].mbps:.1f} vs {res['direct'].mbps:.1f} MB/s)",
        "",
        "counted: puller CPU = wait4 of the pull, RSS = GNU time %M; seeder (serve) and relay "
        "CPU = /proc utime+stime+cutime+cstime delta per pull, RSS = VmHWM reset per pull.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def _on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    size: int = args.size
    timeout = 120.0 + size / (20 * MB)  # generous: 20 MB/s floor plus set-up
    workdir: Path | None = None
    scratch: Path | None = None
    rig: Rig | None = None
    ours, failed = False, True
    env_info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
    try:
        env_info["busy_before_start"] = idle_share()
        workdir, ours = choose_workdir(args.workdir, 2 * size + 512 * MIB)
        scratch = Path(tempfile.mkdtemp(prefix="relay-run-", dir=workdir))
        ckpt = checkpoint.prepare_checkpoint(workdir, size)
        files = checkpoint.checkpoint_files(ckpt)
        nbytes = sum(s for _, s in files)
        rig = Rig(Job(ckpt, nbytes, scratch, args.repeat, timeout), args.p2pckpt_bin)
        rig.settle = args.settle
        rig.start()
        res = bench_interleaved(rig, args.streams, args.repeat)
        target = ratio_target(res)
        info: dict[str, Any] = {
            "checkpoint": {"path": str(ckpt), "files": len(files), "bytes": nbytes},
            "environment": env_info,
            "config": {"size": size, "repeat": args.repeat, "streams": args.streams}
            | {"settle": args.settle},
        }
        print(render(info, res, target, rig), file=sys.stderr if args.json else sys.stdout)
        if args.json:
            info.update(publish=rig.publish, per_run_rss=rig.per_run_rss, target=target)
            info["results"] = {m: res[m].to_json() for m in MODES}
            print(json.dumps(info, indent=2, default=str))
        failed = False
    except BenchError as exc:
        log(f"FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        if rig is not None:
            rig.stop()
        procs.stop_all()
        target_dir = workdir if ours else scratch
        if target_dir is not None:
            shutil.rmtree(target_dir, ignore_errors=True)
            log(f"removed {target_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
