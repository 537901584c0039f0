"""Child processes: run with a time-out, stop by pid, account CPU (``wait4``) and peak RSS.

Peak RSS is GNU time's ``%M``; ``wait4``'s ``ru_maxrss`` is only the fallback, because on
Linux a child's peak starts at its parent's high-water mark."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import BenchError

SETUP_TIMEOUT = 60.0
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "bench_transfer.py"


def helper_argv(*args: object) -> list[object]:
    """Argv re-running the entry script as a helper (raw sender/receiver, generator)."""
    return [sys.executable, ENTRY_SCRIPT, *args]


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _failed(what: str, argv: list[str], returncode: int, output: str) -> BenchError:
    return BenchError(f"{what}: exit status {returncode} ({shlex.join(argv)})\n{tail(output)}")


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a process we started; its whole group if we made it a group leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; only this pid (or the group it leads)."""
    if proc.returncode is not None or proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


_started: list[subprocess.Popen[bytes]] = []


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Remember a started process, so that ``stop_all`` can stop it by pid on exit."""
    _started.append(proc)
    return proc


def stop_all() -> None:
    while _started:
        stop_process(_started.pop())


def _find_gnu_time() -> str | None:
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        if "GNU" in out.stdout + out.stderr:
            return path
    return None


GNU_TIME = _find_gnu_time()


@dataclass
class ProcResult:
    argv: list[str]
    returncode: int
    wall: float
    cpu: float  # user + sys of the process and its reaped descendants
    maxrss_kib: int
    stdout: str
    stderr: str
    timed_out: bool = False
    cpu_sys: float = 0.0  # the sys part of ``cpu``

    def check(self, what: str) -> ProcResult:
        if self.timed_out:
            raise BenchError(f"{what}: timed out after {self.wall:.0f} s ({shlex.join(self.argv)})")
        if self.returncode != 0:
            raise _failed(what, self.argv, self.returncode, self.stderr or self.stdout)
        return self


class MeasuredProc:
    """A started child with ``wait4`` CPU and GNU time peak-RSS accounting."""

    def __init__(
        self, argv: Sequence[object], env: dict[str, str] | None = None, stdout: int | None = None
    ) -> None:
        self.args = [str(a) for a in argv]
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        fd, self._rusage_path = tempfile.mkstemp(prefix="bench-rusage-")
        os.close(fd)
        cmd = self.args
        if GNU_TIME is not None:
            cmd = [GNU_TIME, "-f", "RUSAGE %e %U %S %M", "-o", self._rusage_path, "--", *cmd]
        self.t0 = time.perf_counter()
        self.proc = track(
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._out if stdout is None else stdout,
                stderr=self._err,
                env=env,
                start_new_session=True,
            )
        )

    def wait(self, timeout: float) -> ProcResult:
        """``os.wait4`` the process, killing its group after ``timeout`` seconds."""
        timed_out = threading.Event()
        lock = threading.Lock()
        reaped = False

        def kill() -> None:
            with lock:
                if not reaped:
                    timed_out.set()
                    _signal(self.proc, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        try:
            timer.start()
            try:
                _, status, rusage = os.wait4(self.proc.pid, 0)
                with lock:
                    reaped = True
            finally:
                timer.cancel()
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - self.t0
            maxrss = rusage.ru_maxrss
            with contextlib.suppress(OSError):
                for line in Path(self._rusage_path).read_text().splitlines():
                    if line.startswith("RUSAGE "):
                        maxrss = int(line.split()[4])
            self._out.seek(0)
            self._err.seek(0)
            out, err = (f.read().decode(errors="replace") for f in (self._out, self._err))
            cpu = rusage.ru_utime + rusage.ru_stime
            rc = self.proc.returncode
            sys_cpu = rusage.ru_stime
            return ProcResult(
                self.args, rc, wall, cpu, maxrss, out, err, timed_out.is_set(), sys_cpu
            )
        finally:
            self.close()

    def close(self) -> None:
        stop_process(self.proc)
        self._out.close()
        self._err.close()
        with contextlib.suppress(OSError):
            os.unlink(self._rusage_path)


def run_measured(
    argv: Sequence[object], timeout: float, env: dict[str, str] | None = None
) -> ProcResult:
    """Run a command to completion with CPU and peak-RSS accounting."""
    return MeasuredProc(argv, env).wait(timeout)


def run(
    argv: Sequence[object],
    what: str,
    timeout: float = SETUP_TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a set-up command (not measured); raise BenchError on failure."""
    args = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: timed out after {timeout:.0f} s ({shlex.join(args)})") from None
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {args[0]}: {exc}") from exc
    if cp.returncode != 0:
        raise _failed(what, args, cp.returncode, cp.stderr or cp.stdout)
    return cp
