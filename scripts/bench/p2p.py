"""p2pckpt itself: two trusting homes, ``publish`` and ``serve`` on A, ``pull`` from B."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import BenchError, log
from .cache import can_drop, drop_caches
from .procfs import SystemCpu, proc_status_kib, process_tree, tree_cpu_seconds
from .procs import run, run_measured, stop_process, tail, track
from .results import Job, Run, ToolResult, repeat_runs
from .units import GB, KIB

CKPT_NAME = "bench-ckpt"
SERVE_READY_TIMEOUT = 30.0


def parse_json_object(text: str) -> dict[str, Any]:
    """The one JSON object a ``--json`` command printed on stdout."""
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    raise BenchError(f"no JSON object in output:\n{tail(text)}")


class Serve:
    """``p2pckpt serve`` in the foreground, its stdout drained by a thread."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.log_path = log_path
        with open(log_path, "ab") as errlog:
            self.proc = track(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog
                )
            )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def stderr_tail(self) -> str:
        return tail(self.log_path.read_text(errors="replace"))

    def wait_listening(self, timeout: float) -> int:
        """The port from serve's ``listening on 127.0.0.1:PORT`` line on stdout."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # EOF: serve exited
                break
            seen.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                return int(m.group(1))
        stop_process(self.proc)
        raise BenchError(
            f"p2pckpt serve did not print 'listening on 127.0.0.1:PORT' within {timeout:.0f} s "
            f"(exit status {self.proc.returncode})\nstdout:\n{tail(''.join(seen))}\n"
            f"stderr:\n{self.stderr_tail()}"
        )

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


@dataclass
class P2pResults:
    publish: dict[str, Any] = field(default_factory=dict)
    pulls: dict[int, ToolResult] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Puller:
    """Runs one measured ``pull`` from a fresh copy of B's home against serve on A."""

    job: Job
    exe: Path
    env: dict[str, str]
    homes: Path
    serve: Serve
    port: int

    def pull(self, n: int, result: ToolResult, dest: Path, tag: str) -> Run:
        if self.serve.proc.poll() is not None:
            raise BenchError(
                f"p2pckpt serve exited (status {self.serve.proc.returncode})\n"
                f"{self.serve.stderr_tail()}"
            )
        home = self.homes / f"B-{n}-{tag}"
        if home.exists():
            shutil.rmtree(home)
        shutil.copytree(self.homes / "B-pristine", home, symlinks=True)
        spid = self.serve.proc.pid
        try:
            before = tree_cpu_seconds(spid)
            argv = [self.exe, "--home", home, "pull", CKPT_NAME, "--from", f"127.0.0.1:{self.port}"]
            argv += ["-o", dest, "--streams", n, "--json"]
            with SystemCpu() as system:
                r = run_measured(argv, self.job.timeout, self.env)
            time.sleep(0.2)  # let the server finish its side of the session
            after = tree_cpu_seconds(spid)
            serve_pids = process_tree(spid)  # VmHWM, a high-water mark, covers the whole pull
            rss_server = max(proc_status_kib(pid) for pid in serve_pids)
            r.check(f"p2pckpt pull --streams {n}")
            obj = parse_json_object(r.stdout)
            extra = {k: obj.get(k) for k in ("bytes_total", "bytes_downloaded", "seconds")}
            extra["serve_rss_anon_kib"] = proc_status_kib(spid, "RssAnon")
            extra["serve_rss_file_kib"] = proc_status_kib(spid, "RssFile")
            extra["serve_processes"] = len(serve_pids)
            extra["system"] = system.result
            bd, bt = obj.get("bytes_downloaded"), obj.get("bytes_total")
            if isinstance(bd, int) and isinstance(bt, int) and bd < bt:
                note = f"pull {tag} downloaded {bd} of {bt} bytes (local reuse?); "
                note += "not a cold network pull"
                if note not in result.notes:
                    result.notes.append(note)
                log(note)
            return Run(r.wall, r.cpu, after - before, r.maxrss_kib, rss_server, extra)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _publish(job: Job, exe: Path, env: dict[str, str], home: Path) -> dict[str, Any]:
    log("p2pckpt publish (set-up for serve)")
    argv = [exe, "--home", home, "publish", job.ckpt, "--name", CKPT_NAME, "--version", "1"]
    pub = run_measured([*argv, "--json"], job.timeout, env).check("p2pckpt publish")
    obj = parse_json_object(pub.stdout)
    out: dict[str, Any] = {"json": obj, "wall_seconds": pub.wall, "cpu_seconds": pub.cpu}
    out["peak_rss_mib"] = pub.maxrss_kib / KIB
    with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
        out["hash_gb_per_s"] = float(obj["bytes"]) / GB / float(obj["seconds"])
    out["wall_gb_per_s"] = job.nbytes / GB / pub.wall
    rate = out.get("hash_gb_per_s", float("nan"))
    log(
        f"publish: {pub.wall:.2f} s wall, JSON seconds={obj.get('seconds')} "
        f"bytes={obj.get('bytes')}, hash {rate:.2f} GB/s"
    )
    return out


def _publish_runs(
    job: Job, exe: Path, env: dict[str, str], homes: Path, cold: bool
) -> dict[str, Any]:
    """``job.repeat`` timed publishes, each into a fresh copy of the initialised home A
    (nothing cached from earlier publishes); ``cold`` drops the page cache before each."""
    mode = "cold" if cold else "warm"
    if cold and (why := can_drop()) is not None:
        return {"skipped": f"cannot drop caches: {why}"}
    runs: list[dict[str, Any]] = []
    for i in range(1, job.repeat + 1):
        home = homes / f"A-publish-{mode}-{i}"
        shutil.copytree(homes / "A-init", home, symlinks=True)
        try:
            argv = [exe, "--home", home, "publish", job.ckpt, "--name", CKPT_NAME]
            argv += ["--version", "1", "--json"]
            if cold:
                drop_caches()
            pub = run_measured(argv, job.timeout, env).check(f"p2pckpt publish ({mode})")
        finally:
            shutil.rmtree(home, ignore_errors=True)
        obj = parse_json_object(pub.stdout)
        run_info = {"wall_seconds": pub.wall, "cpu_seconds": pub.cpu, "json": obj}
        run_info["peak_rss_kib"] = pub.maxrss_kib
        runs.append(run_info)
        log(
            f"publish {mode} run {i}/{job.repeat}: {pub.wall:.3f} s, "
            f"{job.nbytes / GB / pub.wall:.2f} GB/s, JSON seconds={obj.get('seconds')}, "
            f"cpu {pub.cpu:.2f} s, peak RSS {pub.maxrss_kib / KIB:.0f} MiB"
        )
    walls = [r["wall_seconds"] for r in runs]
    out: dict[str, Any] = {"runs": runs, "median_seconds": statistics.median(walls)}
    out.update(min_seconds=min(walls), max_seconds=max(walls))
    out["gb_per_s"] = job.nbytes / GB / out["median_seconds"]
    own = [r["json"].get("seconds") for r in runs]
    if all(isinstance(x, int | float) and x > 0 for x in own):
        out["hash_gb_per_s"] = job.nbytes / GB / statistics.median(own)
    out["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in runs)
    out["peak_rss_mib"] = max(r["peak_rss_kib"] for r in runs) / KIB
    return out


def bench_p2pckpt(job: Job, exe: Path, streams: list[int]) -> P2pResults:
    res = P2pResults()
    env = {k: v for k, v in os.environ.items() if k != "P2PCKPT_HOME"}
    env.update(NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    homes = job.scratch / "p2p"
    homes.mkdir(mode=0o700)
    home_a, home_b = homes / "A", homes / "B-pristine"
    serve: Serve | None = None
    try:
        if not exe.exists():
            raise BenchError(f"p2pckpt console script not found at {exe}")

        def cli(home: Path, *args: object, what: str) -> str:
            return run([exe, "--home", home, *args], f"p2pckpt {what}", env=env).stdout

        ids: dict[str, str] = {}
        for tag, home in (("A", home_a), ("B", home_b)):
            cli(home, "init", what="init")
            lines = [ln.strip() for ln in cli(home, "id", what="id").splitlines() if ln.strip()]
            if not lines:
                raise BenchError("p2pckpt id printed nothing")
            ids[tag] = lines[-1]
        log(f"p2pckpt peers: A={ids['A']} B={ids['B']}")
        cli(home_a, "trust", "add", ids["B"], "--name", "b", what="trust add")
        cli(home_b, "trust", "add", ids["A"], "--name", "a", "--role", "publish", what="trust add")
        shutil.copytree(home_a, homes / "A-init", symlinks=True)
        if job.cold:
            drop_caches()
        res.publish = {"setup": _publish(job, exe, env, home_a)}  # also the publish warm-up
        for cold in (True, False):
            res.publish["cold" if cold else "warm"] = _publish_runs(job, exe, env, homes, cold)

        argv = [str(exe), "--home", str(home_a), "serve", "--listen", "127.0.0.1:0", "--no-mdns"]
        serve = Serve(argv, job.scratch / "serve.log")
        port = serve.wait_listening(SERVE_READY_TIMEOUT)
        log(f"p2pckpt serve (pid {serve.proc.pid}) listening on 127.0.0.1:{port}")
        puller = Puller(job, exe, env, homes, serve, port)
        for n in streams:
            result = res.pulls[n] = ToolResult(f"p2pckpt x{n}", job.nbytes, family="p2pckpt")
            result.notes.append(
                "client = pull (wait4); server = serve tree via /proc "
                "(CPU delta, VmHWM); fresh copy of B's home per pull"
            )
            one = functools.partial(puller.pull, n, result)
            repeat_runs(result, job, f"p2pckpt pull --streams {n}", one)
            if result.error and serve.proc.poll() is not None:
                break
    except BenchError as exc:
        res.error = str(exc)
        log(f"p2pckpt FAILED: {exc}")
    finally:
        if serve is not None:
            serve.stop()
            log("stopped p2pckpt serve")
    return res
