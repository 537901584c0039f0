#!/usr/bin/env python3
"""Swarm benchmark: one seeder and N pullers, each in its own network namespace.

What is measured, in one run and on the same bytes
---------------------------------------------------
The checkpoint of ``scripts/bench_transfer.py`` (``--size`` bytes of sharded safetensors,
generated once and reused from ``--workdir``) is published by a seeder. The seeder and
every puller sit in their own namespace on one bridge; every link is shaped with ``tc
tbf`` to ``--rate`` in each direction (see ``bench/lan.py``), so the seeder's uplink is
the bottleneck a NAS would be. For each N in ``--pullers`` (default 4 and 8):

* single: one puller runs ``p2pckpt pull --from SEEDER`` alone (the reference time T1).
* swarm: N pullers run ``p2pckpt daemon`` following the name; the seeder runs ``p2pckpt
  push NAME --to P1 ... --to PN``, which tells each target where the others are, so they
  pull from the seeder and from each other. Timed until push returns, i.e. until every
  target reports the version verified. The seeder's upload (push ``bytes_served``) is
  shown as a multiple of the checkpoint.
* plain pulls, sharing: the N pullers each run ``p2pckpt pull --from SEEDER`` at the same
  time; they find each other by mDNS (the LAN floods multicast) and trade chunks (issue 17,
  item 2). Timed until the last one exits; the seeder's upload is what its link sent.
* fan-out: the same with ``--no-share``, each from the seeder alone (what scp or rsync
  from the NAS would do). Timed until the last one exits.

Every copy is checked (exit status, and the bytes on disk add up to the checkpoint; each
chunk was BLAKE3-verified by the puller itself), then deleted, untimed. Every run starts
from fresh copies of the same initialised homes, so no puller ever holds the version
before its run. Times are wall-clock seconds, one run each (the rates are shaped, so the
machine's noise matters little); ratios are against the single-puller time of this run.

Target (issue 17): every swarm within 1.25x single, the seeder uploading at most 1.2x the
checkpoint (fan-out is expected near N x). ``--modes`` picks the runs (``--swarm-only``:
the pushes alone).
A MISS does not change the exit status; 1 means a measurement failed, 2 bad usage.
Every subprocess has a timeout; namespaces and processes are removed on exit.

Usage (root; ``ip`` and ``tc`` from iproute2)::

    python scripts/bench_swarm.py                                 # 1 GiB, 100mbit, 4 and 8
    python scripts/bench_swarm.py --size 256MiB --pullers 4 --rate 200mbit --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside us

from bench import BenchError, checkpoint, log
from bench.lan import Lan, shaped_lan
from bench.units import GIB, human_bytes
from bench_transfer import parse_size

TARGET = 1.25  # issue 17: every swarm within 1.25x one puller alone (aim: 1.2x)
SEEDER_TARGET = 1.2  # ... the seeder uploading at most 1.2x the checkpoint
NAME = "swarm-bench"
MODES = ("swarm", "shared", "fanout")
PORT = 7450
CLI = [sys.executable, "-m", "p2pckpt"]
FAULTY = Path(__file__).resolve().parent / "bench" / "faulty.py"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark a swarm (push to N daemons) against N pulls from one seeder.",
        epilog="See the module docstring for what exactly is measured.",
    )
    p.add_argument("--size", type=parse_size, default=GIB, help="checkpoint size (default 1GiB)")
    p.add_argument("--rate", default="100mbit", help="tc rate of every link, each way")
    p.add_argument("--pullers", default="4,8", help="comma-separated puller counts")
    p.add_argument("--workdir", type=Path, help="where checkpoints and copies go")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="runs for each N: swarm (push), shared (plain pulls), fanout (--no-share)",
    )
    p.add_argument("--swarm-only", action="store_true", help="the same as --modes swarm")
    p.add_argument(
        "--faulty",
        action="store_true",
        help="in the push runs, one puller serves corrupt chunks and one stalls (issue 17 item 5)",
    )
    args = p.parse_args(argv)
    try:
        args.counts = sorted({int(x) for x in args.pullers.split(",")})
    except ValueError:
        p.error("--pullers takes numbers, e.g. 4,8")
    if not args.counts or min(args.counts) < 1 or max(args.counts) > 32:
        p.error("--pullers: between 1 and 32 pullers")
    args.modes = {"swarm"} if args.swarm_only else set(args.modes.split(","))
    if not args.modes or not args.modes <= set(MODES):
        p.error(f"--modes: some of {','.join(MODES)}")
    if not re.fullmatch(r"[0-9.]+[kmg]?bit", args.rate):
        p.error("--rate: e.g. 100mbit")
    return args


class Rig:
    """Homes for the seeder and every puller, initialised once and copied per run."""

    def __init__(self, lan: Lan, work: Path, pullers: list[str], ckpt: Path) -> None:
        self.lan, self.work, self.pullers, self.ckpt = lan, work, pullers, ckpt
        self.template = work / "template"
        self.procs: list[subprocess.Popen[str]] = []
        self.ids: dict[str, str] = {}  # node -> peer ID
        self.faulty: dict[str, str] = {}  # puller -> its fault (scripts/bench/faulty.py)

    def cli(self, home: Path, *args: object, node: str, timeout: float = 60.0) -> str:
        argv = [*self.lan.prefix(node), *CLI, "--home", str(home), *map(str, args)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"p2pckpt {' '.join(map(str, args))}: {done.stderr.strip()[-800:]}")
        return done.stdout

    def prepare(self) -> None:
        """Init every home, trust (pullers: the seeder for everything, each other to pull),
        publish on the seeder."""
        if self.template.exists():
            shutil.rmtree(self.template)
        ids = self.ids
        for node in ["seeder", *self.pullers]:
            home = self.template / node
            ids[node] = self.cli(home, "init", node=node).strip()
            (home / "config.toml").write_text("[discovery]\nmdns = false\n")
        for puller in self.pullers:
            self.cli(
                self.template / "seeder",
                "trust",
                "add",
                ids[puller],
                "--role",
                "pull",
                node="seeder",
            )
            self.cli(
                self.template / puller,
                "trust",
                "add",
                ids["seeder"],
                "--name",
                "seeder",
                "--role",
                "publish",
                "--role",
                "push",
                node=puller,
            )
            for other in self.pullers:
                if other != puller:
                    self.cli(
                        self.template / puller,
                        "trust",
                        "add",
                        ids[other],
                        "--name",
                        other,
                        "--role",
                        "pull",
                        node=puller,
                    )
        t0 = time.monotonic()
        self.cli(
            self.template / "seeder",
            "publish",
            self.ckpt,
            "--name",
            NAME,
            "--version",
            "1",
            node="seeder",
            timeout=600,
        )
        log(f"published {human_bytes(checkpoint_size(self.ckpt))} in {time.monotonic() - t0:.1f} s")

    def fresh(self, tag: str) -> Path:
        run = self.work / f"run-{tag}"
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(self.template, run, symlinks=True)
        return run

    def start(self, node: str, argv: list[str], log_path: Path, banner: str) -> str:
        """Start a long-running command in ``node``; return its listen address."""
        out = open(log_path, "w+")  # noqa: SIM115 -- closed with the process log
        proc = subprocess.Popen(
            [*self.lan.prefix(node), *argv], stdout=out, stderr=subprocess.STDOUT, text=True
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(banner, log_path.read_text())
            if found:
                return found.group(1)
            if proc.poll() is not None:
                raise BenchError(f"{argv[-1]} in {node} exited: {log_path.read_text()[-800:]}")
            time.sleep(0.05)
        raise BenchError(f"{node} did not start listening within 30 s")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()

    def serve_seeder(self, run: Path) -> str:
        addr = f"{self.lan.addr('seeder')}:{PORT}"
        argv = [*CLI, "--home", str(run / "seeder"), "serve", "--listen", addr, "--no-mdns"]
        self.start("seeder", argv, run / "seeder.log", r"listening on ([0-9.]+:\d+)")
        return addr

    def pulls(
        self, run: Path, pullers: list[str], seeder: str, timeout: float, share: bool = False
    ) -> float:
        """Each of ``pullers`` runs a plain pull from the seeder, all at once; seconds until
        the last has exited (each must succeed). Without ``share`` each pulls from the seeder
        alone (``--no-share``: what scp or rsync would do); with it they find each other
        by mDNS and trade chunks (issue 17, item 2)."""
        started = time.monotonic()
        procs = {
            p: subprocess.Popen(
                [
                    *self.lan.prefix(p),
                    *CLI,
                    "--home",
                    str(run / p),
                    "pull",
                    NAME,
                    "--from",
                    seeder,
                    "-o",
                    str(run / f"copy-{p}"),
                    "--json",
                    *(["--share", "--config", str(self._mdns_config(run, p))] if share else []),
                    *([] if share else ["--no-share"]),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in pullers
        }
        for p, proc in procs.items():
            try:
                _out, err = proc.communicate(timeout=max(1.0, started + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in procs.values():
                    other.kill()
                raise BenchError(f"pull by {p} took longer than {timeout:.0f} s") from None
            if proc.returncode != 0:
                raise BenchError(f"pull by {p} exited {proc.returncode}: {err.strip()[-800:]}")
        elapsed = time.monotonic() - started
        for p in pullers:
            check_copy(run / f"copy-{p}", self.ckpt, f"pull by {p}")
        return elapsed

    @staticmethod
    def _mdns_config(run: Path, puller: str) -> Path:
        """A config with mDNS on (the homes have it off, so pushes use only hints)."""
        path = run / puller / "share.toml"
        path.write_text("[discovery]\nmdns = true\n")
        return path

    def swarm(self, run: Path, pullers: list[str], timeout: float) -> tuple[float, int]:
        """Daemons on every puller, then one push to all; (seconds, bytes the seeder sent)."""
        targets = []
        for p in pullers:
            cfg = run / p / "daemon.toml"
            fault = self.faulty.get(p)
            cfg.write_text(
                f'[serve]\nlisten = "{self.lan.addr(p)}:{PORT}"\n[discovery]\nmdns = false\n'
                f'[[follow]]\nname = "{NAME}"\ndir = "{run / p / "models"}"\n'
                + ('[transfer]\ncompress = "off"\n' if fault else "")  # every chunk via the fault
            )
            cli = [*CLI] if fault is None else [sys.executable, str(FAULTY), fault]
            argv = [*cli, "--home", str(run / p), "daemon", "--config", str(cfg)]
            targets.append(self.start(p, argv, run / f"{p}.log", r"daemon listening on (\S+)"))
        argv = [*self.lan.prefix("seeder"), *CLI, "--home", str(run / "seeder"), "push", NAME]
        for t in targets:
            argv += ["--to", t]
        argv += ["--listen", f"{self.lan.addr('seeder')}:0", "--json"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise BenchError(
                f"push exited {done.returncode}: {done.stdout[-800:]} {done.stderr[-800:]}"
            )
        doc = json.loads(done.stdout)
        corrupt = [self.ids[p][:5] for p in pullers if self.faulty.get(p) == "corrupt"]
        banned: dict[str, int] = {}
        for p in pullers:
            check_copy(run / p / "models" / NAME / "current", self.ckpt, f"swarm puller {p}")
            text = (run / f"{p}.log").read_text()
            found = re.search(r"sources=(\S+)", text)
            log(f"  {p} took from: {found.group(1) if found else '?'}")
            for bad in corrupt:
                banned[bad] = banned.get(bad, 0) + (f"bad source peer={bad}" in text)
        quiet = sum((run / f"{p}.log").read_text().count("quiet source") for p in pullers)
        log(f"  connections that gave back requests for being quiet: {quiet}")
        for bad, count in banned.items():
            log(f"  the corrupting puller {bad} was banned by {count} of {len(pullers) - 1}")
        return elapsed, int(doc["bytes_served"])


def checkpoint_size(root: Path) -> int:
    return sum(size for _, size in checkpoint.checkpoint_files(root))


def check_copy(dest: Path, ckpt: Path, what: str) -> None:
    got = checkpoint.checkpoint_files(dest.resolve()) if dest.exists() else []
    if got != checkpoint.checkpoint_files(ckpt):
        raise BenchError(f"{what}: the copy's files differ from the checkpoint's")


def measure(
    rig: Rig, counts: list[int], size: int, rate_bps: float, modes: set[str]
) -> dict[str, Any]:
    alone = size / rate_bps
    result: dict[str, Any] = {"runs": {}}

    def finish(run: Path) -> None:
        rig.stop_all()
        shutil.rmtree(run)
        os.sync()  # untimed: writeback of these copies must not leak into the next run

    def plain(tag: str, pullers: list[str], share: bool) -> tuple[float, int]:
        """Plain pulls by ``pullers`` at once from a fresh seeder: seconds, and
        the bytes the seeder's link sent meanwhile."""
        run = rig.fresh(tag)
        seeder = rig.serve_seeder(run)
        before = rig.lan.sent("seeder")
        timeout = 20 * len(pullers) * alone + 300
        seconds = rig.pulls(run, pullers, seeder, timeout=timeout, share=share)
        sent = rig.lan.sent("seeder") - before
        finish(run)
        return seconds, sent

    log(f"single puller (about {alone:.0f} s at the link rate)")
    single, _ = plain("single", rig.pullers[:1], share=False)
    log(f"  single: {single:.1f} s")
    result["single_s"] = single
    for n in counts:
        pullers = rig.pullers[:n]
        row: dict[str, float] = {}
        if "swarm" in modes:
            run = rig.fresh(f"swarm{n}")
            log(f"swarm of {n}: push to {n} daemons")
            swarm_s, served = rig.swarm(run, pullers, timeout=20 * alone + 300)
            finish(run)
            log(f"  swarm {n}: {swarm_s:.1f} s, seeder uploaded {served / size:.2f}x")
            row |= {
                "swarm_s": swarm_s,
                "swarm_ratio": swarm_s / single,
                "seeder_upload_x": served / size,
            }
        if "shared" in modes:
            log(f"plain pulls of {n}, sharing: each from the seeder and the others it finds")
            shared_s, sent = plain(f"shared{n}", pullers, share=True)
            log(f"  shared {n}: {shared_s:.1f} s, the seeder sent {sent / size:.2f}x")
            row |= {
                "shared_s": shared_s,
                "shared_ratio": shared_s / single,
                "shared_seeder_sent_x": sent / size,
            }
        if "fanout" in modes:
            log(f"fan-out of {n}: each from the seeder alone (about {n * alone:.0f} s)")
            fan_s, _ = plain(f"fanout{n}", pullers, share=False)
            log(f"  fan-out {n}: {fan_s:.1f} s")
            row |= {"fanout_s": fan_s, "fanout_ratio": fan_s / single}
        result["runs"][n] = row
    return result


def rate_bits(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([kmg]?)bit", text)
    assert m is not None
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def render(args: argparse.Namespace, size: int, result: dict[str, Any]) -> list[str]:
    single = result["single_s"]
    lines = [
        f"swarm benchmark: {human_bytes(size)} checkpoint, every link {args.rate} each way,"
        " one run each",
        f"  single puller from the seeder   {single:8.1f} s  ({size / single / 1e6:.1f} MB/s)",
    ]
    met = True
    for n, r in result["runs"].items():
        if "swarm_s" in r:
            ok = r["swarm_ratio"] <= TARGET and r["seeder_upload_x"] <= SEEDER_TARGET
            met &= ok
            lines.append(
                f"  N={n:<2} swarm (push --to all)     {r['swarm_s']:8.1f} s  "
                f"{r['swarm_ratio']:.2f}x single  (seeder uploaded {r['seeder_upload_x']:.2f}x"
                f" the checkpoint)  {'MET' if ok else 'MISS'}"
            )
        if "shared_s" in r:
            lines.append(
                f"  N={n:<2} plain pulls, sharing     {r['shared_s']:8.1f} s  "
                f"{r['shared_ratio']:.2f}x single  (the seeder sent"
                f" {r['shared_seeder_sent_x']:.2f}x the checkpoint, on its link)"
            )
        if "fanout_s" in r:
            lines.append(
                f"  N={n:<2} each from seeder alone    {r['fanout_s']:8.1f} s  "
                f"{r['fanout_ratio']:.2f}x single"
            )
    pushed = any("swarm_s" in r for r in result["runs"].values())
    verdict = ("MET" if met else "MISS") if pushed else "not judged (no push runs)"
    lines.append(
        f"target: every swarm within {TARGET}x single, the seeder uploading at most"
        f" {SEEDER_TARGET}x: {verdict}"
    )
    return lines


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            log(f"error: '{tool}' (iproute2) is needed")
            return 1
    n = max(args.counts)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p2pckpt-swarm-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    need = args.size * (n + 2) + (1 << 30)
    if shutil.disk_usage(workdir).free < need:
        log(f"error: {workdir} needs {human_bytes(need)} free")
        return 1
    pullers = [f"p{i + 1}" for i in range(n)]
    try:
        ckpt = checkpoint.prepare_checkpoint(workdir, args.size)
        with shaped_lan(["seeder", *pullers], args.rate) as lan:
            rig = Rig(lan, workdir, pullers, ckpt)
            if args.faulty:
                rig.faulty = {"p1": "corrupt", "p2": "stall"}
            try:
                rig.prepare()
                result = measure(rig, args.counts, args.size, rate_bits(args.rate) / 8, args.modes)
            finally:
                rig.stop_all()
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in render(args, args.size, result):
        print(line, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        targets = {"target": TARGET, "seeder_target": SEEDER_TARGET}
        print(json.dumps({"size": args.size, "rate": args.rate, **targets, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
