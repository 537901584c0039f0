"""Reading /proc: a server's process tree with its CPU ticks and memory high-water marks,
and the machine-wide CPU shares during a copy."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.2  # a /proc scan costs ~1-2 ms of our CPU


def _stat(pid: int) -> tuple[str, list[bytes]] | None:
    """(comm, fields 3.. of /proc/PID/stat), or None if the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:  # gone (ENOENT/ESRCH) or not ours
        return None
    end = raw.rindex(b")")
    return raw[raw.index(b"(") + 1 : end].decode(errors="replace"), raw[end + 2 :].split()


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (scans /proc; no CONFIG_PROC_CHILDREN needed)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(int(st[1][1]), []).append(pid)  # field 4 is the ppid
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime (fields 14-17) summed over a process tree, in seconds."""
    ticks = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is not None:
            ticks += sum(int(f) for f in st[1][11:15])
    return ticks / CLK_TCK


def wait_no_children(root: int, timeout: float = 10.0) -> None:
    """Wait until ``root`` has reaped all its children (so their CPU is in cutime)."""
    deadline = time.monotonic() + timeout
    while len(process_tree(root)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)


def proc_status_kib(pid: int, key: str = "VmHWM") -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM, RssAnon, RssFile...), 0 if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """The largest VmHWM of ``root``'s descendants, sampled every SAMPLE_INTERVAL seconds."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _sample(self) -> None:
        for pid in process_tree(self._root):
            if pid != self._root:
                self.peak_kib = max(self.peak_kib, proc_status_kib(pid))

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()


def _all_process_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (comm, utime+stime ticks) for every process on the machine."""
    out: dict[int, tuple[str, int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            out[pid] = (st[0], int(st[1][11]) + int(st[1][12]))
    return out


class SystemCpu:
    """Machine-wide CPU shares over a block (first line of /proc/stat), and who used it.

    Tells a slow run that was CPU-bound (busy near 100% of all cores) from one that
    waited on the disk (iowait) or on the hypervisor (steal, if the guest sees it).
    """

    def __enter__(self) -> SystemCpu:
        self._procs0 = _all_process_ticks()
        self._t0 = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        d = [b - a for a, b in zip(self._t0, self._read(), strict=False)]
        d += [0] * (8 - len(d))
        total = sum(d[:8]) or 1
        user, nice, system, idle, iowait, irq, softirq, steal = d[:8]
        busy = user + nice + system + irq + softirq
        self.result: dict[str, Any] = {
            "busy_cpu_seconds": busy / CLK_TCK,
            "busy": busy / total,
            "iowait": iowait / total,
            "idle": idle / total,
            "steal": steal / total,
        }
        # Processes alive at the end, kernel threads included; ones that exited are missing.
        used = sorted(
            (
                (ticks - self._procs0.get(pid, ("", 0))[1], f"{comm}[{pid}]")
                for pid, (comm, ticks) in _all_process_ticks().items()
            ),
            reverse=True,
        )
        self.result["top_processes"] = [
            [name, round(ticks / CLK_TCK, 2)] for ticks, name in used[:6] if ticks > 0
        ]

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
