"""The parts of ``scripts/bench_relay.py``: one seeder pulled from directly and through a relay.

Home A publishes and runs ``serve --no-mdns --relay``; ``p2pckpt relay`` runs beside it;
home B (mDNS off, the relay in its config) pulls ``--from 127.0.0.1:PORT`` (direct) or
``--from PEER_ID`` (no static address and no mDNS, so the finder goes through the relay).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import BenchError, log
from .p2p import CKPT_NAME, SERVE_READY_TIMEOUT, Serve, _publish, parse_json_object
from .procfs import SystemCpu, proc_status_kib, tree_cpu_seconds
from .procs import run, run_measured, tail
from .results import Job, Run, _check_copy, _clear_dest_parent, _fresh_dest
from .units import GB, KIB, MB

MODES = ("direct", "relay")
REGISTER_TIMEOUT = 30.0  # serve's background registration with the relay
B_CONFIG = '[discovery]\nmdns = false\n[relay]\naddr = "127.0.0.1:{port}"\n'


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class ModeResult:
    mode: str
    nbytes: int
    runs: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float:
        picks: dict[str, Callable[[Run], float]] = {
            "wall": lambda r: r.wall,
            "seeder": lambda r: r.cpu_server,
            "puller": lambda r: r.cpu_client,
            "puller_sys": lambda r: float(r.extra["puller_sys"]),
            "relay": lambda r: float(r.extra["relay_cpu"]),
        }
        return statistics.median(picks[key](r) for r in self.runs)

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.median("wall")

    def cpu_per_gb(self, key: str) -> float:
        return self.median(key) / (self.nbytes / GB)

    def peak_rss_mib(self) -> dict[str, float]:
        return {
            "seeder": max(r.rss_server_kib for r in self.runs) / KIB,
            "puller": max(r.rss_client_kib for r in self.runs) / KIB,
            "relay": max(int(r.extra["relay_rss_kib"]) for r in self.runs) / KIB,
        }

    def system(self) -> tuple[float, float, float]:
        """Median machine-wide busy, not-measured-here ("other") and iowait shares."""
        cpus = os.cpu_count() or 1
        rows = [(r, r.extra["system"]) for r in self.runs]
        ours = [r.cpu_client + r.cpu_server + float(r.extra["relay_cpu"]) for r, _ in rows]
        other = [
            max(0.0, s["busy_cpu_seconds"] - c) / (r.wall * cpus)
            for (r, s), c in zip(rows, ours, strict=True)
        ]
        med = statistics.median
        return med(s["busy"] for _, s in rows), med(other), med(s["iowait"] for _, s in rows)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "bytes": self.nbytes}
        if self.runs:
            out["median_seconds"] = self.median("wall")
            out["mb_per_s"] = self.mbps
            out["cpu_s_per_gb"] = {
                k: self.cpu_per_gb(k) for k in ("seeder", "puller", "puller_sys", "relay")
            }
            out["peak_rss_mib"] = self.peak_rss_mib()
            busy, other, iowait = self.system()
            out["system"] = {"busy": busy, "other": other, "iowait": iowait}
        out["runs"] = [r.__dict__ for r in self.runs]
        return out


@dataclass
class Rig:
    """Relay, seeder and B's pristine home, set up by ``start``; ``pull`` measures one pull."""

    job: Job
    exe: Path
    env: dict[str, str] = field(default_factory=dict)
    relay: Serve | None = None
    seeder: Serve | None = None
    relay_port: int = 0
    seed_port: int = 0
    peer_a: str = ""
    publish: dict[str, Any] = field(default_factory=dict)
    per_run_rss: bool = True  # False if VmHWM could not be reset: then it is cumulative
    settle: float = 0.0  # seconds to wait (untimed) between clearing and the next pull

    @property
    def homes(self) -> Path:
        return self.job.scratch / "p2p"

    def cli(self, home: str, *args: object, what: str, timeout: float = 60.0) -> str:
        argv = [self.exe, "--home", self.homes / home, *args]
        return run(argv, f"p2pckpt {what}", timeout, self.env).stdout

    def start(self) -> None:
        if not self.exe.exists():
            raise BenchError(f"p2pckpt console script not found at {self.exe}")
        self.env = {k: v for k, v in os.environ.items() if k != "P2PCKPT_HOME"}
        self.env.update(NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
        self.homes.mkdir(mode=0o700)
        ids: dict[str, str] = {}
        for home in ("A", "B"):
            self.cli(home, "init", what="init")
            lines = self.cli(home, "id", what="id").split()
            if not lines:
                raise BenchError("p2pckpt id printed nothing")
            ids[home] = lines[-1]
        self.peer_a = ids["A"]
        log(f"p2pckpt peers: A={ids['A']} B={ids['B']}")
        self.cli("A", "trust", "add", ids["B"], "--name", "b", what="trust add")
        self.cli(
            "B", "trust", "add", ids["A"], "--name", "a", "--role", "publish", what="trust add"
        )
        self.publish = _publish(self.job, self.exe, self.env, self.homes / "A")

        exe, scratch = str(self.exe), self.job.scratch
        argv = [exe, "--home", str(self.homes / "R"), "relay", "--listen", "127.0.0.1:0"]
        self.relay = Serve(argv, scratch / "relay.log")
        self.relay_port = self._ready(self.relay, "relay")
        (self.homes / "B" / "config.toml").write_text(B_CONFIG.format(port=self.relay_port))
        argv = [exe, "--home", str(self.homes / "A"), "serve", "--listen", "127.0.0.1:0"]
        argv += ["--no-mdns", "--relay", f"127.0.0.1:{self.relay_port}"]
        self.seeder = Serve(argv, scratch / "serve.log")
        self.seed_port = self._ready(self.seeder, "serve")
        self._wait_registered()

    def _ready(self, daemon: Serve, what: str) -> int:
        try:
            port = daemon.wait_listening(SERVE_READY_TIMEOUT)
        except BenchError as exc:
            raise BenchError(f"p2pckpt {what}: {exc}") from None
        log(f"p2pckpt {what} (pid {daemon.proc.pid}) listening on 127.0.0.1:{port}")
        return port

    def _wait_registered(self) -> None:
        """Poll ``ls --peer A`` from B (relay only) until it answers, within REGISTER_TIMEOUT."""
        t0 = time.monotonic()
        deadline, last = t0 + REGISTER_TIMEOUT, ""
        while (left := deadline - time.monotonic()) > 0:
            try:
                out = self.cli("B", "ls", "--peer", self.peer_a, "--json", what="ls", timeout=left)
                routes = {str(row.get("route")) for row in json.loads(out) if isinstance(row, dict)}
                if routes and routes <= {"relay"}:
                    log(f"seeder reachable through the relay after {time.monotonic() - t0:.1f} s")
                    return
                last = f"ls --json routes {sorted(routes)}: {tail(out)}"
            except (BenchError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise BenchError(
            f"seeder not reachable through the relay in {REGISTER_TIMEOUT:.0f} s: {last}"
        )

    def check_alive(self) -> None:
        for what, daemon in (("serve", self.seeder), ("relay", self.relay)):
            if daemon is None or daemon.proc.poll() is not None:
                status = None if daemon is None else daemon.proc.returncode
                stderr = "" if daemon is None else daemon.stderr_tail()
                raise BenchError(f"p2pckpt {what} is not running (status {status})\n{stderr}")

    def pull(self, mode: str, streams: int, tag: str) -> Run:
        """One pull into a fresh destination from a fresh copy of B's home, checked and removed."""
        self.check_alive()
        assert self.seeder is not None and self.relay is not None
        spid, rpid = self.seeder.proc.pid, self.relay.proc.pid
        home = self.homes / f"B-{tag}"
        shutil.copytree(self.homes / "B", home, symlinks=True)
        dest = _fresh_dest(self.job.scratch, tag)
        src = f"127.0.0.1:{self.seed_port}" if mode == "direct" else self.peer_a
        argv = [self.exe, "--home", home, "pull", CKPT_NAME, "--from", src, "-o", dest]
        try:
            time.sleep(self.settle)
            self.per_run_rss = reset_peak_rss(spid) & reset_peak_rss(rpid) & self.per_run_rss
            cpu0 = tree_cpu_seconds(spid), tree_cpu_seconds(rpid)
            with SystemCpu() as system:
                r = run_measured(
                    [*argv, "--streams", streams, "--json"], self.job.timeout, self.env
                )
            time.sleep(0.2)  # let serve and relay finish their side of the session
            cpu1 = tree_cpu_seconds(spid), tree_cpu_seconds(rpid)
            rss = proc_status_kib(spid), proc_status_kib(rpid)
            r.check(f"p2pckpt pull ({mode}, {tag})")
            obj = parse_json_object(r.stdout)
            routes = [p.get("route") for p in obj.get("peers") or [] if isinstance(p, dict)]
            if not routes or any(route != mode for route in routes):
                raise BenchError(f"{mode} pull {tag} went by route(s) {routes}, not {mode!r}")
            if obj.get("bytes_downloaded") != obj.get("bytes_total"):
                raise BenchError(f"{mode} pull {tag} reused local bytes: {tail(r.stdout)}")
            _check_copy(dest, self.job.nbytes, f"{mode} pull {tag}")
        finally:
            _clear_dest_parent(dest.parent)
            shutil.rmtree(home, ignore_errors=True)
        extra: dict[str, Any] = {"relay_cpu": cpu1[1] - cpu0[1], "relay_rss_kib": rss[1]}
        extra.update(system=system.result, route=routes[0], pull_seconds=obj.get("seconds"))
        extra["puller_sys"] = r.cpu_sys
        return Run(r.wall, r.cpu, cpu1[0] - cpu0[0], r.maxrss_kib, rss[0], extra)

    def stop(self) -> None:
        for daemon in (self.seeder, self.relay):
            if daemon is not None:
                with contextlib.suppress(OSError):
                    daemon.stop()


def bench_interleaved(rig: Rig, streams: int, repeat: int) -> dict[str, ModeResult]:
    """Warm-up direct and relayed, then ``repeat`` rounds of direct, relayed."""
    results = {m: ModeResult(m, rig.job.nbytes) for m in MODES}
    for i in range(repeat + 1):
        for mode in MODES:
            r = rig.pull(mode, streams, f"{mode}-{i}")
            what = "warm-up" if i == 0 else f"run {i}/{repeat}"
            log(
                f"{mode:>6} {what}: {r.wall:.3f} s, {rig.job.nbytes / MB / r.wall:.1f} MB/s, cpu "
                f"seeder {r.cpu_server:.2f} puller {r.cpu_client:.2f} (sys "
                f"{r.extra['puller_sys']:.2f}) relay {r.extra['relay_cpu']:.2f} s"
            )
            if i:
                results[mode].runs.append(r)
    return results
