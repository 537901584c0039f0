#!/usr/bin/env python3
"""Loopback transfer benchmark: p2pckpt against scp, rsync and a raw socket copy.

What is measured, in one run and on the same bytes
---------------------------------------------------
A sharded checkpoint directory (``model-0000K-of-0000N.safetensors`` files with
valid safetensors headers, ``model.safetensors.index.json``, ``config.json``) of
``--size`` bytes is generated once into the work directory. The tensor bytes are
one 64 MiB ``os.urandom`` block, passed through a different byte permutation for
every 64 MiB of output (``bytes.translate``, ~1 GB/s), so every byte differs
between blocks and no two chunks can dedupe under BLAKE3 content addressing.
Everything is measured warm, from the page cache: nothing is dropped, every tool
gets one untimed warm-up copy, then ``--repeat`` timed copies; the table shows
the median wall time. Each copy goes to a fresh destination directory that is
removed (and ``sync``-ed, untimed) afterwards.

* ``raw loopback``: the machine's ceiling. A Python sender subprocess
  ``sendfile``-s every file over one TCP connection on 127.0.0.1 and a receiver
  subprocess ``recv_into``-s a 1 MiB buffer and ``write``-s the files. The
  ``+fsync`` row is the same with an ``fsync`` of every received file, which is
  what a durable puller (p2pckpt renames a verified, fsynced copy into place)
  has to pay and scp/rsync do not.
* ``scp`` and ``rsync``: download ``root@127.0.0.1:SRC`` through this script's
  own ``sshd`` (temporary config, host key and client key in a temp dir, free
  loopback port, ``UsePAM no``), with ssh's default cipher (reported from
  ``ssh -G`` and from the negotiation seen by ``ssh -v``). OpenSSH >= 9.0's scp
  speaks the SFTP protocol (``Subsystem sftp internal-sftp`` on our sshd).
  rsync is plain ``rsync -a -e ssh`` (no ``-z``, no ``--fsync``).
* ``p2pckpt``: two homes A and B that trust each other; ``publish`` on A
  (its JSON ``bytes``/``seconds`` give the hashing rate, the command is also
  timed as a whole), ``serve --listen 127.0.0.1:0 --no-mdns`` on A, then
  ``pull NAME --from 127.0.0.1:PORT -o DEST --streams N --json`` from B for
  every N of ``--streams``. Each pull uses a fresh copy of B's pristine home
  (made right after ``init``/``trust``), so no pull can reuse chunks from an
  earlier one; ``bytes_downloaded < bytes_total`` is flagged if it happens.

How time, CPU and memory are counted
------------------------------------
* Wall time: from just before the client process starts until it (and, for the
  raw copy, the receiver) has exited, so ssh connection set-up and Python
  start-up are included, as a user would see them.
* Client CPU and peak RSS: ``os.wait4`` on the client process, i.e. user+sys
  and ``ru_maxrss`` of that process and every descendant it reaped (scp + its
  ssh; rsync + its forks + ssh; the p2pckpt pull; the raw receiver).
* Server CPU: the long-running server's process tree read from ``/proc``
  before and after each copy: ``utime+stime+cutime+cstime`` (clock ticks) of
  the server and every live descendant. For sshd this covers the per-connection
  sshd processes, internal-sftp and the remote ``rsync --server`` (they are
  reaped into the listener's ``cutime``/``cstime``; the script waits until the
  listener has no children left before reading). For ``p2pckpt serve`` it is
  the serve process (all its threads) plus any children. For the raw copy the
  sender is a subprocess measured with ``wait4`` like the client.
* Client peak RSS: with GNU time installed (``/usr/bin/time``), the command runs
  under ``time -o FILE`` and ``%M`` is its peak RSS. (``wait4``'s ``ru_maxrss``
  alone is not usable: on Linux a child's peak starts at its parent's high-water
  mark. Without GNU time it is the fallback, and the checkpoint is generated in
  a child process to keep this script's own mark low.)
* Server peak RSS: for ``p2pckpt serve``, ``VmHWM`` from ``/proc/PID/status``
  (a high-water mark over the whole serve lifetime, so far) of the serve process
  and any descendants, read after each pull; for sshd, the largest ``VmHWM`` seen
  while sampling the listener's descendants every 200 ms (per-connection
  processes are short-lived, so this is a sampled lower bound).
* Machine-wide CPU busy and iowait shares during each timed copy come from
  ``/proc/stat``; they tell a CPU-bound run (busy ~100% of both cores) from one
  that waited on the disk or the host. On the small VM this was written on,
  wall times varied by up to 2x between identical runs at constant CPU seconds,
  so look at the min-max column and use a larger ``--repeat`` before concluding.
* CPU s/GB = (client + server CPU seconds) / (checkpoint bytes / 1e9); MB/s uses
  1 MB = 1e6 bytes; RSS is in MiB.

The targets checked at the end (from the issue): pull throughput >= 1.5x scp and
>= 1.2x rsync, pull CPU s/GB (both sides) <= rsync's, peak RSS < 200 MiB per
p2pckpt process, publish hashing >= 1 GB/s. A MISS does not change the exit
status (this is a benchmark, not a test); exit status 1 means a measurement
failed, 2 bad usage.

If ``sshd``/``scp``/``rsync`` are missing and we are root, the script runs
``apt-get update`` and ``apt-get install -y openssh-server openssh-client rsync``
(with a temporary ``/usr/sbin/policy-rc.d`` that forbids starting the system
sshd, if none exists). Every subprocess has a timeout; started processes are
stopped and temporary files removed on exit, including on errors and SIGTERM.

Usage::

    python scripts/bench_transfer.py                      # 2 GiB, 3 repeats
    python scripts/bench_transfer.py --size 256MiB --repeat 1 --skip-p2pckpt
    python scripts/bench_transfer.py --streams 1,2,4 --json > result.json

With ``--json`` the tables go to stderr and stdout holds one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pwd
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MB = 1e6
GB = 1e9

BLOCK_BYTES = 64 * MIB  # one os.urandom block, permuted differently per block
SHARD_TARGET_BYTES = 512 * MIB
TENSOR_BYTES = 64 * MIB
ROW_COLS = 4096
ROW_BYTES = ROW_COLS * 2  # F16
RAW_BUFFER_BYTES = 1 * MIB
LAYOUT_VERSION = 1
CKPT_NAME = "bench-ckpt"

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.2  # a /proc scan costs ~1-2 ms of our CPU
SERVE_READY_TIMEOUT = 30.0
SETUP_TIMEOUT = 60.0
APT_TIMEOUT = 900.0

TARGET_VS_SCP = 1.5
TARGET_VS_RSYNC = 1.2
TARGET_RSS_MIB = 200.0
TARGET_HASH_GBPS = 1.0

SSH_TOOLS = ("sshd", "ssh", "scp", "ssh-keygen", "rsync")
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class BenchError(Exception):
    """A measurement or set-up step failed; the message is shown to the user."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sizes


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kib": KIB, "kb": 1000,
    "m": MIB, "mib": MIB, "mb": 1000**2,
    "g": GIB, "gib": GIB, "gb": 1000**3,
    "t": 1024 * GIB, "tib": 1024 * GIB, "tb": 1000**4,
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


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


# --------------------------------------------------------------------------- processes


class Reaper:
    """Remembers every process we start and stops the leftovers, by pid, on exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def track(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in reversed(procs):
            stop_process(proc)


REAPER = Reaper()


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


def _find_gnu_time() -> str | None:
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=False)
        if "GNU" in out.stdout + out.stderr:
            return path
    return None


GNU_TIME = _find_gnu_time()
_RUSAGE_FORMAT = "RUSAGE %e %U %S %M"


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

    def check(self, what: str) -> ProcResult:
        if self.timed_out:
            raise BenchError(f"{what}: timed out after {self.wall:.0f} s ({shlex.join(self.argv)})")
        if self.returncode != 0:
            raise BenchError(
                f"{what}: exit status {self.returncode} ({shlex.join(self.argv)})\n"
                f"{tail(self.stderr or self.stdout)}"
            )
        return self


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def wait_measured(
    proc: subprocess.Popen[bytes], timeout: float
) -> tuple[int, Any, bool]:
    """``os.wait4`` the process (killing it after ``timeout``); return status, rusage, timed-out."""
    timed_out = threading.Event()
    lock = threading.Lock()
    reaped = False

    def _kill() -> None:
        with lock:
            if not reaped:
                timed_out.set()
                _signal(proc, signal.SIGKILL)

    timer = threading.Timer(timeout, _kill)
    timer.daemon = True
    timer.start()
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
        with lock:
            reaped = True
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, rusage, timed_out.is_set()


class MeasuredProc:
    """A child process with CPU (``wait4``) and peak-RSS accounting.

    ``ru_maxrss`` from ``wait4`` is useless for a child of a big parent: on Linux a
    child's peak starts at its parent's high-water mark (the pre-exec image counts).
    So, when GNU time is installed, the command runs under ``/usr/bin/time -o FILE``
    (a ~2 MiB process) and its ``%M`` is the peak RSS; CPU still comes from our
    ``wait4`` (time's own CPU is negligible). The child leads its own process group
    so a timeout kills the command too, not only the wrapper.
    """

    def __init__(self, argv: Sequence[object], env: dict[str, str] | None = None,
                 stdout: int | None = None) -> None:
        self.args = [str(a) for a in argv]
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        fd, self._rusage_path = tempfile.mkstemp(prefix="bench-rusage-")
        os.close(fd)
        cmd = self.args
        if GNU_TIME is not None:
            cmd = [GNU_TIME, "-f", _RUSAGE_FORMAT, "-o", self._rusage_path, "--", *self.args]
        self.t0 = time.perf_counter()
        self.proc = REAPER.track(subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._out if stdout is None else stdout,
            stderr=self._err, env=env, start_new_session=True,
        ))

    def wait(self, timeout: float) -> ProcResult:
        try:
            rc, rusage, timed_out = wait_measured(self.proc, timeout)
            wall = time.perf_counter() - self.t0
            maxrss = rusage.ru_maxrss
            with contextlib.suppress(OSError):
                for line in Path(self._rusage_path).read_text().splitlines():
                    if line.startswith("RUSAGE "):
                        maxrss = int(line.split()[4])
            self._out.seek(0)
            self._err.seek(0)
            return ProcResult(
                argv=self.args, returncode=rc, wall=wall,
                cpu=rusage.ru_utime + rusage.ru_stime, maxrss_kib=maxrss,
                stdout=self._out.read().decode(errors="replace"),
                stderr=self._err.read().decode(errors="replace"),
                timed_out=timed_out,
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
    """Run a command to completion with per-process CPU and peak RSS accounting."""
    return MeasuredProc(argv, env).wait(timeout)


def run(
    argv: Sequence[object],
    what: str,
    timeout: float = SETUP_TIMEOUT,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a set-up command (not measured); raise BenchError on failure."""
    args = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: timed out after {timeout:.0f} s ({shlex.join(args)})") from None
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {args[0]}: {exc}") from exc
    if check and cp.returncode != 0:
        raise BenchError(
            f"{what}: exit status {cp.returncode} ({shlex.join(args)})\n"
            f"{tail(cp.stderr or cp.stdout)}"
        )
    return cp


# --------------------------------------------------------------------------- /proc


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in ticks) of a process, or None if gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:  # gone (ENOENT/ESRCH) or not ours
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); ppid is field 4, utime..cstime are fields 14..17.
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (scans /proc; no CONFIG_PROC_CHILDREN needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process tree, including already-reaped descendants."""
    ticks = 0
    for pid in process_tree(root):
        st = _proc_stat(pid)
        if st is not None:
            ticks += st[1]
    return ticks / CLK_TCK


def proc_status_kib(pid: int, key: str = "VmHWM") -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM, RssAnon, RssFile...), 0 if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _all_process_cpu() -> dict[int, tuple[str, int]]:
    """pid -> (comm, utime+stime ticks) for every process on the machine."""
    out: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue
        comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        fields = raw[raw.rindex(b")") + 2 :].split()
        out[int(entry)] = (comm, int(fields[11]) + int(fields[12]))
    return out


class SystemCpu:
    """Machine-wide CPU use over a block, from the first line of /proc/stat.

    Tells a slow run that was CPU-bound (busy near 100% of all cores) from one that
    waited on the disk (iowait) or on the hypervisor (steal, if the guest sees it).
    """

    def __enter__(self) -> SystemCpu:
        self._procs0 = _all_process_cpu()
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
        # Who used the CPU directly (utime+stime of processes alive at the end,
        # kernel threads included; processes that exited during the block are missing).
        procs1 = _all_process_cpu()
        used = sorted(
            ((ticks - self._procs0.get(pid, ("", 0))[1], f"{comm}[{pid}]")
             for pid, (comm, ticks) in procs1.items()),
            reverse=True,
        )
        self.result["top_processes"] = [
            [name, round(ticks / CLK_TCK, 2)] for ticks, name in used[:6] if ticks > 0
        ]

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]


def wait_no_children(root: int, timeout: float = 10.0) -> None:
    """Wait until ``root`` has reaped all its children (so their CPU is in cutime)."""
    deadline = time.monotonic() + timeout
    while len(process_tree(root)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)


class RssSampler:
    """Samples the largest VmHWM over a process tree every SAMPLE_INTERVAL seconds."""

    def __init__(self, root: int, include_root: bool) -> None:
        self._root = root
        self._include_root = include_root
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
            if pid != self._root or self._include_root:
                self.peak_kib = max(self.peak_kib, proc_status_kib(pid))

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()


# --------------------------------------------------------------------------- checkpoint


def _permutation(k: int) -> bytes:
    """A byte permutation per block index; different blocks differ at every byte (k < 256)."""
    hi, lo = (k >> 8) & 0xFF, k & 0xFF
    return bytes(((b ^ hi) + lo) & 0xFF for b in range(256))


class _ByteStream:
    """Endless pseudo-random stream: block k is ``base.translate(_permutation(k))``."""

    def __init__(self) -> None:
        self._base = os.urandom(BLOCK_BYTES)
        self._k = -1
        self._block = memoryview(b"")
        self._pos = 0

    def write_to(self, f: IO[bytes], n: int) -> None:
        while n:
            if self._pos == len(self._block):
                self._k += 1
                self._block = memoryview(self._base.translate(_permutation(self._k)))
                self._pos = 0
            take = min(n, len(self._block) - self._pos)
            f.write(self._block[self._pos : self._pos + take])
            self._pos += take
            n -= take


_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def generate_checkpoint(dest: Path, size: int) -> None:
    """Write a sharded safetensors checkpoint with ``size`` bytes of tensor data."""
    total = size // ROW_BYTES * ROW_BYTES
    shards = 1 if total < 16 * MIB else max(2, math.ceil(total / SHARD_TARGET_BYTES))
    per = total // shards // ROW_BYTES * ROW_BYTES
    sizes = [per] * (shards - 1) + [total - per * (shards - 1)]
    stream = _ByteStream()
    weight_map: dict[str, str] = {}
    tensor = 0
    dest.mkdir(parents=True)
    for i, shard_bytes in enumerate(sizes, 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        while offset < shard_bytes:
            n = min(TENSOR_BYTES, shard_bytes - offset)
            tname = f"model.layers.{tensor // len(_PROJ)}.{_PROJ[tensor % len(_PROJ)]}.weight"
            header[tname] = {
                "dtype": "F16", "shape": [n // ROW_BYTES, ROW_COLS],
                "data_offsets": [offset, offset + n],
            }
            weight_map[tname] = name
            offset += n
            tensor += 1
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(dest / name, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            stream.write_to(f, shard_bytes)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
        "hidden_size": ROW_COLS, "num_hidden_layers": tensor // len(_PROJ) + 1,
        "p2pckpt_bench": {"layout": LAYOUT_VERSION, "bytes": size},
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def checkpoint_files(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )


def tree_bytes(root: Path) -> int:
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- results


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
        """Median share of the machine's CPU used by processes we did not measure."""
        cpus = os.cpu_count() or 1
        values = [
            max(0.0, r.extra["system"]["busy_cpu_seconds"] - r.cpu_client - r.cpu_server)
            / (r.wall * cpus)
            for r in self.runs if "system" in r.extra
        ]
        return statistics.median(values) if values else float("nan")

    @property
    def rss_client_mib(self) -> float:
        return max(r.rss_client_kib for r in self.runs) / KIB

    @property
    def rss_server_mib(self) -> float:
        return max(r.rss_server_kib for r in self.runs) / KIB

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "bytes": self.nbytes, "error": self.error,
                               "notes": self.notes}
        if self.ok:
            out.update(
                median_seconds=self.median_s, mb_per_s=self.mbps,
                cpu_s_per_gb=self.cpu_per_gb(), cpu_s_per_gb_client=self.cpu_per_gb("client"),
                cpu_s_per_gb_server=self.cpu_per_gb("server"),
                peak_rss_mib_client=self.rss_client_mib, peak_rss_mib_server=self.rss_server_mib,
            )
        out["runs"] = [r.__dict__ for r in self.runs]
        return out


def fresh_dest(scratch: Path, tag: str) -> Path:
    parent = scratch / f"dst-{tag}"
    clear_dest_parent(parent)
    parent.mkdir(parents=True)
    return parent / "ckpt"


def clear_dest_parent(parent: Path) -> None:
    """Remove a destination's parent: the copy and any hidden partial beside it."""
    if parent.exists():
        for entry in parent.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        parent.rmdir()
    os.sync()  # untimed: don't let writeback of the last copy leak into the next one


def check_copy(dest: Path, expected: int, what: str) -> None:
    got = tree_bytes(dest) if dest.exists() else -1
    if got != expected:
        raise BenchError(f"{what}: destination holds {got} bytes, expected {expected}")


def repeat_runs(
    result: ToolResult, repeat: int, one: Callable[[str], Run], what: str
) -> ToolResult:
    """One untimed warm-up then ``repeat`` timed runs; errors end up in ``result.error``."""
    try:
        for i in range(repeat + 1):
            tag = "warm-up" if i == 0 else f"run {i}/{repeat}"
            r = one(f"{i}")
            log(f"{what} {tag}: {r.wall:.3f} s, {result.nbytes / MB / r.wall:.1f} MB/s, "
                f"cpu {r.cpu_client:.2f}+{r.cpu_server:.2f} s")
            if i:
                result.runs.append(r)
    except BenchError as exc:
        result.error = str(exc)
        log(f"{what} FAILED: {exc}")
    return result


# --------------------------------------------------------------------------- raw loopback


def _raw_recv_main(dest: str, listing: str, fsync: str) -> int:
    files = json.loads(Path(listing).read_text())
    root = Path(dest)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(60)
        print(srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
    buf = memoryview(bytearray(RAW_BUFFER_BYTES))
    with conn:
        conn.settimeout(60)
        for rel, size in files:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb", buffering=0) as f:
                left = size
                while left:
                    n = conn.recv_into(buf, min(left, RAW_BUFFER_BYTES))
                    if not n:
                        raise SystemExit(f"raw receiver: EOF with {left} bytes of {rel} missing")
                    done = 0
                    while done < n:
                        done += f.write(buf[done:n]) or 0
                    left -= n
                if fsync == "1":
                    os.fsync(f.fileno())
    return 0


def _raw_send_main(port: str, src: str, listing: str) -> int:
    files = json.loads(Path(listing).read_text())
    with socket.create_connection(("127.0.0.1", int(port)), timeout=60) as sock:
        for rel, size in files:
            with open(Path(src) / rel, "rb") as f:
                sock.sendfile(f, 0, size)
        sock.shutdown(socket.SHUT_WR)
    return 0


def read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a child's stdout, bounded in time."""
    q: queue.Queue[bytes] = queue.Queue()
    t = threading.Thread(target=lambda: q.put(stream.readline()), daemon=True)
    t.start()
    try:
        return q.get(timeout=timeout).decode(errors="replace")
    except queue.Empty:
        raise BenchError(f"no output from child within {timeout:.0f} s") from None


def bench_raw(ckpt: Path, scratch: Path, nbytes: int, repeat: int, fsync: bool,
              timeout: float) -> ToolResult:
    label = "raw loopback" + (" +fsync" if fsync else "")
    result = ToolResult(label, nbytes)
    result.notes.append("python sendfile -> recv_into+write, 1 TCP connection on 127.0.0.1")
    listing = scratch / "raw-files.json"
    listing.write_text(json.dumps(checkpoint_files(ckpt)))
    script = str(Path(__file__).resolve())

    def one(tag: str) -> Run:
        dest = fresh_dest(scratch, f"raw-{tag}")
        try:
            recv = MeasuredProc(
                [sys.executable, script, "_raw_recv", dest, listing, "1" if fsync else "0"],
                stdout=subprocess.PIPE)
            try:
                assert recv.proc.stdout is not None
                port = read_line(recv.proc.stdout, 30).strip()
                if not port.isdigit():
                    raise BenchError(f"raw receiver did not report a port (got {port!r})")
                with SystemCpu() as system:
                    t0 = time.perf_counter()
                    send = run_measured(
                        [sys.executable, script, "_raw_send", port, ckpt, listing], timeout)
                    got = recv.wait(timeout)
                    wall = time.perf_counter() - t0
                send.check("raw sender")
                got.check("raw receiver")
            finally:
                recv.close()
                if recv.proc.stdout is not None:
                    recv.proc.stdout.close()
            check_copy(dest, nbytes, label)
            return Run(wall, got.cpu, send.cpu, got.maxrss_kib, send.maxrss_kib,
                       {"system": system.result})
        finally:
            clear_dest_parent(dest.parent)

    return repeat_runs(result, repeat, one, label)


# --------------------------------------------------------------------------- ssh


def find_exe(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATH])
    return shutil.which(name, path=path)


def ensure_ssh_tools() -> dict[str, str]:
    """Find sshd/ssh/scp/ssh-keygen/rsync, installing them with apt-get if needed."""
    missing = [t for t in SSH_TOOLS if find_exe(t) is None]
    if missing:
        if os.geteuid() != 0 or find_exe("apt-get") is None:
            raise BenchError(
                f"missing {', '.join(missing)}; install openssh-server openssh-client rsync "
                "(needs root and apt-get) or pass --skip-ssh"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = False
        if not policy.exists():
            log(f"writing a temporary {policy} (exit 101) so the package does not start "
                "the system sshd")
            policy.write_text("#!/bin/sh\n# temporary, from scripts/bench_transfer.py\nexit 101\n")
            policy.chmod(0o755)
            made_policy = True
        try:
            log(f"missing {', '.join(missing)}: running apt-get update")
            run(["apt-get", "update"], "apt-get update", APT_TIMEOUT, env)
            log("running apt-get install -y openssh-server openssh-client rsync")
            run(["apt-get", "install", "-y", "openssh-server", "openssh-client", "rsync"],
                "apt-get install", APT_TIMEOUT, env)
        finally:
            if made_policy:
                policy.unlink(missing_ok=True)
        log("installed openssh-server openssh-client rsync")
    tools = {t: find_exe(t) for t in SSH_TOOLS}
    still = [t for t, p in tools.items() if p is None]
    if still:
        raise BenchError(f"still missing after install: {', '.join(still)}")
    return {t: str(p) for t, p in tools.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    tools: dict[str, str]
    home: Path
    user: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    made_privsep: Path | None = None

    @property
    def key(self) -> Path:
        return self.home / "client_ed25519"

    def client_opts(self) -> list[str]:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-i", str(self.key)]

    def ssh_argv(self) -> list[str]:
        return [self.tools["ssh"], *self.client_opts(), "-p", str(self.port)]

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1"

    def start(self) -> None:
        self.home.mkdir(parents=True)
        self.home.chmod(0o700)
        keygen = self.tools["ssh-keygen"]
        run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "bench-host",
             "-f", self.home / "ssh_host_ed25519_key"], "ssh-keygen (host)")
        run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "bench-client", "-f", self.key],
            "ssh-keygen (client)")
        shutil.copyfile(self.key.with_suffix(".pub"), self.home / "authorized_keys")
        privsep = Path("/run/sshd")
        if os.geteuid() == 0 and not privsep.exists():
            privsep.mkdir(mode=0o755, parents=True)
            self.made_privsep = privsep
        for attempt in range(3):
            self.port = free_port()
            config = self.home / "sshd_config"
            config.write_text("\n".join([
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                "AddressFamily inet",
                f"HostKey {self.home / 'ssh_host_ed25519_key'}",
                f"PidFile {self.home / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.home / 'authorized_keys'}",
                f"AllowUsers {self.user}",
                "UsePAM no",
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ]))
            run([self.tools["sshd"], "-t", "-f", config], "sshd -t (config check)")
            errlog = open(self.home / "sshd.log", "ab")  # noqa: SIM115 -- lives with sshd
            try:
                self.proc = REAPER.track(subprocess.Popen(
                    [self.tools["sshd"], "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                    start_new_session=True,
                ))
            finally:
                errlog.close()
            if self._wait_ready(10.0):
                log(f"own sshd (pid {self.proc.pid}) listening on 127.0.0.1:{self.port}")
                return
            stop_process(self.proc)
            log(f"sshd did not come up on port {self.port} (attempt {attempt + 1})")
        raise BenchError(f"sshd did not start; log:\n{tail((self.home / 'sshd.log').read_text())}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=2
            ) as s:
                if s.recv(8).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            log(f"stopped own sshd (pid {self.proc.pid})")
            self.proc = None
        if self.made_privsep is not None:
            with contextlib.suppress(OSError):
                self.made_privsep.rmdir()
            self.made_privsep = None

    def describe(self) -> dict[str, str]:
        """Versions and the cipher: ssh -G's first choice and what ssh -v negotiated."""
        info: dict[str, str] = {}
        ver = run([self.tools["ssh"], "-V"], "ssh -V")
        info["ssh_version"] = (ver.stderr or ver.stdout).strip()
        g = run([*self.ssh_argv(), "-G", self.target], "ssh -G").stdout
        for line in g.splitlines():
            key, _, value = line.partition(" ")
            if key in ("ciphers", "macs", "kexalgorithms", "compression"):
                info[f"ssh_G_{key}"] = value
        info["cipher_default"] = info.get("ssh_G_ciphers", "?").split(",")[0]
        v = run([*self.ssh_argv(), "-v", self.target, "true"], "ssh -v (connectivity check)")
        m = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+) compression: (\S+)",
                      v.stderr)
        if m:
            info["cipher_negotiated"] = m.group(1)
            info["mac_negotiated"] = m.group(2)
            info["compression_negotiated"] = m.group(3)
        rv = run([self.tools["rsync"], "--version"], "rsync --version").stdout
        info["rsync_version"] = " ".join(rv.split("\n", 1)[0].split()) if rv else "?"
        return info


def bench_ssh_tool(
    label: str, server: SshServer, make_argv: Callable[[Path], list[str]], ckpt_bytes: int,
    scratch: Path, repeat: int, timeout: float,
) -> ToolResult:
    result = ToolResult(label, ckpt_bytes)
    result.notes.append("client CPU/RSS via wait4; server = own sshd tree via /proc "
                        "(CPU: utime+stime+cutime+cstime delta; RSS: sampled VmHWM)")
    assert server.proc is not None
    sshd_pid = server.proc.pid

    def one(tag: str) -> Run:
        dest = fresh_dest(scratch, f"{label}-{tag}")
        try:
            wait_no_children(sshd_pid)
            before = tree_cpu_seconds(sshd_pid)
            with RssSampler(sshd_pid, include_root=False) as sampler, SystemCpu() as system:
                r = run_measured(make_argv(dest), timeout)
            wait_no_children(sshd_pid)
            after = tree_cpu_seconds(sshd_pid)
            r.check(label)
            check_copy(dest, ckpt_bytes, label)
            return Run(r.wall, r.cpu, after - before, r.maxrss_kib, sampler.peak_kib,
                       {"system": system.result})
        finally:
            clear_dest_parent(dest.parent)

    return repeat_runs(result, repeat, one, label)


# --------------------------------------------------------------------------- p2pckpt


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed (whole stdout, or its last JSON line)."""
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
    raise BenchError(f"no JSON object in output:\n{tail(text)}")


class Serve:
    """``p2pckpt serve`` in the foreground, its stdout drained by a thread."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.log_path = log_path
        errlog = open(log_path, "ab")  # noqa: SIM115 -- lives with the server
        try:
            self.proc = REAPER.track(subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog,
            ))
        finally:
            errlog.close()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def wait_listening(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        eof = False
        while not eof and time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                # The contract says stdout; accept stderr too, but say so.
                m = pattern.search(self.log_path.read_text(errors="replace"))
                if m:
                    log("note: p2pckpt serve printed 'listening on' to stderr, not stdout")
                    return int(m.group(1))
                continue
            if line is None:
                eof = True
                continue
            seen.append(line)
            m = pattern.search(line)
            if m:
                return int(m.group(1))
        stop_process(self.proc)
        raise BenchError(
            f"p2pckpt serve did not print 'listening on 127.0.0.1:PORT' within {timeout:.0f} s "
            f"(exit status {self.proc.returncode})\nstdout:\n{tail(''.join(seen))}\n"
            f"stderr:\n{tail(self.log_path.read_text(errors='replace'))}"
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


def bench_p2pckpt(
    exe: Path, ckpt: Path, scratch: Path, ckpt_bytes: int, streams: list[int], repeat: int,
    timeout: float,
) -> P2pResults:
    res = P2pResults()
    env = {k: v for k, v in os.environ.items() if k != "P2PCKPT_HOME"}
    env.update(NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")
    homes = scratch / "p2p"
    homes.mkdir(mode=0o700)
    home_a, home_b = homes / "A", homes / "B-pristine"
    serve: Serve | None = None
    try:
        if not exe.exists():
            raise BenchError(f"p2pckpt console script not found at {exe}")

        def cli(home: Path, *args: object, what: str, t: float = SETUP_TIMEOUT) -> str:
            return run([exe, "--home", home, *args], f"p2pckpt {what}", t, env).stdout

        ids: dict[str, str] = {}
        for tag, home in (("A", home_a), ("B", home_b)):
            cli(home, "init", what="init")
            lines = [ln.strip() for ln in cli(home, "id", what="id").splitlines() if ln.strip()]
            if not lines:
                raise BenchError("p2pckpt id printed nothing")
            ids[tag] = lines[-1]
        log(f"p2pckpt peers: A={ids['A']} B={ids['B']}")
        cli(home_a, "trust", "add", ids["B"], "--name", "b", what="trust add")
        cli(home_b, "trust", "add", ids["A"], "--name", "a", what="trust add")

        log("p2pckpt publish (page cache warm)")
        pub = run_measured([exe, "--home", home_a, "publish", ckpt, "--name", CKPT_NAME,
                            "--version", "1", "--json"], timeout, env).check("p2pckpt publish")
        obj = parse_json_object(pub.stdout)
        res.publish = {"json": obj, "wall_seconds": pub.wall, "cpu_seconds": pub.cpu,
                       "peak_rss_mib": pub.maxrss_kib / KIB}
        with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
            res.publish["hash_gb_per_s"] = float(obj["bytes"]) / GB / float(obj["seconds"])
        res.publish["wall_gb_per_s"] = ckpt_bytes / GB / pub.wall
        log(f"publish: {pub.wall:.2f} s wall, JSON seconds={obj.get('seconds')} "
            f"bytes={obj.get('bytes')}, hash {res.publish.get('hash_gb_per_s', float('nan')):.2f}"
            " GB/s")

        serve = Serve([str(exe), "--home", str(home_a), "serve", "--listen", "127.0.0.1:0",
                       "--no-mdns"], scratch / "serve.log")
        port = serve.wait_listening(SERVE_READY_TIMEOUT)
        spid = serve.proc.pid
        log(f"p2pckpt serve (pid {spid}) listening on 127.0.0.1:{port}")

        for n in streams:
            result = ToolResult(f"p2pckpt x{n}", ckpt_bytes)
            result.notes.append("client = pull (wait4); server = serve tree via /proc "
                                "(CPU delta, VmHWM); fresh copy of B's home per pull")
            res.pulls[n] = result

            def one(tag: str, n: int = n, result: ToolResult = result) -> Run:
                assert serve is not None
                home = homes / f"B-{n}-{tag}"
                if home.exists():
                    shutil.rmtree(home)
                shutil.copytree(home_b, home, symlinks=True)
                dest = fresh_dest(scratch, f"p2p-{n}-{tag}")
                try:
                    if serve.proc.poll() is not None:
                        raise BenchError(
                            f"p2pckpt serve exited (status {serve.proc.returncode})\n"
                            f"{tail(serve.log_path.read_text(errors='replace'))}")
                    before = tree_cpu_seconds(spid)
                    with SystemCpu() as system:
                        r = run_measured(
                            [exe, "--home", home, "pull", CKPT_NAME, "--from",
                             f"127.0.0.1:{port}", "-o", dest, "--streams", n, "--json"],
                            timeout, env)
                    time.sleep(0.2)  # let the server finish its side of the session
                    after = tree_cpu_seconds(spid)
                    # VmHWM is a high-water mark: reading it now covers the whole pull.
                    serve_pids = process_tree(spid)
                    rss_server = max(proc_status_kib(pid) for pid in serve_pids)
                    r.check(f"p2pckpt pull --streams {n}")
                    check_copy(dest, ckpt_bytes, f"p2pckpt pull --streams {n}")
                    obj = parse_json_object(r.stdout)
                    extra = {k: obj.get(k) for k in ("bytes_total", "bytes_downloaded", "seconds")}
                    extra["serve_rss_anon_kib"] = proc_status_kib(spid, "RssAnon")
                    extra["serve_rss_file_kib"] = proc_status_kib(spid, "RssFile")
                    extra["serve_processes"] = len(serve_pids)
                    extra["system"] = system.result
                    bd, bt = obj.get("bytes_downloaded"), obj.get("bytes_total")
                    if isinstance(bd, int) and isinstance(bt, int) and bd < bt:
                        note = (f"pull {tag} downloaded {bd} of {bt} bytes (local reuse?); "
                                "not a cold network pull")
                        if note not in result.notes:
                            result.notes.append(note)
                        log(note)
                    return Run(r.wall, r.cpu, after - before, r.maxrss_kib, rss_server, extra)
                finally:
                    clear_dest_parent(dest.parent)
                    shutil.rmtree(home, ignore_errors=True)

            repeat_runs(result, repeat, one, f"p2pckpt pull --streams {n}")
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


# --------------------------------------------------------------------------- report


@dataclass
class Target:
    name: str
    value: float | None
    threshold: str
    passed: bool | None
    shown: str

    def status(self) -> str:
        return "n/a " if self.passed is None else ("PASS" if self.passed else "MISS")


def evaluate_targets(tools: dict[str, ToolResult], p2p: P2pResults | None) -> list[Target]:
    out: list[Target] = []
    if p2p is None:
        return out
    scp, rsync = tools.get("scp"), tools.get("rsync")
    for n, pull in p2p.pulls.items():
        tag = f"pull x{n}"
        ok = pull.ok
        for name, base, need in (("scp", scp, TARGET_VS_SCP), ("rsync", rsync, TARGET_VS_RSYNC)):
            if ok and base is not None and base.ok:
                ratio = pull.mbps / base.mbps
                out.append(Target(f"{tag} throughput >= {need}x {name}", ratio, f">= {need}",
                                  ratio >= need, f"{ratio:.2f}x"))
            else:
                out.append(Target(f"{tag} throughput >= {need}x {name}", None, f">= {need}",
                                  None, "no data"))
        if ok and rsync is not None and rsync.ok:
            mine, theirs = pull.cpu_per_gb(), rsync.cpu_per_gb()
            out.append(Target(f"{tag} CPU s/GB <= rsync's", mine, f"<= {theirs:.2f}",
                              mine <= theirs, f"{mine:.2f} vs {theirs:.2f} s/GB"))
        else:
            out.append(Target(f"{tag} CPU s/GB <= rsync's", None, "", None, "no data"))
        if ok:
            worst = max(pull.rss_client_mib, pull.rss_server_mib)
            shown = f"pull {pull.rss_client_mib:.0f} MiB, serve {pull.rss_server_mib:.0f} MiB"
            if worst >= TARGET_RSS_MIB:  # help tell heap growth from mmap-ed file pages
                last = pull.runs[-1].extra
                shown += (f" (serve now: anon {last.get('serve_rss_anon_kib', 0) / KIB:.0f} MiB,"
                          f" file-backed {last.get('serve_rss_file_kib', 0) / KIB:.0f} MiB)")
            out.append(Target(f"{tag} peak RSS < {TARGET_RSS_MIB:.0f} MiB per process", worst,
                              f"< {TARGET_RSS_MIB:.0f}", worst < TARGET_RSS_MIB, shown))
        else:
            out.append(Target(f"{tag} peak RSS < {TARGET_RSS_MIB:.0f} MiB per process", None,
                              "", None, "no data"))
    rate = p2p.publish.get("hash_gb_per_s")
    out.append(Target(f"publish hashing >= {TARGET_HASH_GBPS:g} GB/s", rate,
                      f">= {TARGET_HASH_GBPS:g}",
                      None if rate is None else rate >= TARGET_HASH_GBPS,
                      "no data" if rate is None else f"{rate:.2f} GB/s"))
    return out


def render(
    ckpt_info: dict[str, Any], env_info: dict[str, Any], tools: dict[str, ToolResult],
    p2p: P2pResults | None, targets: list[Target], repeat: int,
) -> str:
    lines: list[str] = []
    add = lines.append
    add("")
    add(f"checkpoint: {ckpt_info['files']} files, {ckpt_info['bytes']:,} bytes "
        f"({human_bytes(ckpt_info['bytes'])}) at {ckpt_info['path']}")
    add(f"machine: {env_info['cpus']} CPUs, kernel {env_info['kernel']}, "
        f"python {env_info['python']}")
    if "ssh" in env_info:
        s = env_info["ssh"]
        add(f"ssh: {s.get('ssh_version', '?')}; default cipher (ssh -G first choice) "
            f"{s.get('cipher_default', '?')}, negotiated {s.get('cipher_negotiated', '?')} "
            f"MAC {s.get('mac_negotiated', '?')} compression "
            f"{s.get('compression_negotiated', '?')}; scp mode {s.get('scp_mode', '?')}; "
            f"{s.get('rsync_version', '?')}")
    add(f"client peak RSS: {env_info['peak_rss_method']}; machine CPU busy before start: "
        f"{100 * env_info.get('busy_before_start', float('nan')):.0f}%")
    add(f"median of {repeat} timed run(s) after 1 warm-up; page cache warm; 1 MB = 1e6 bytes")
    add("")
    head = (f"{'tool':<20}{'median s':>10}{'min-max s':>13}{'MB/s':>10}{'% raw':>8}{'CPU s/GB':>10}"
            f"{'(cli+srv)':>14}{'RSS cli MiB':>13}{'RSS srv MiB':>13}{'busy/other/iow%':>17}")
    add(head)
    add("-" * len(head))
    raw = tools.get("raw")
    rows = list(tools.values()) + (list(p2p.pulls.values()) if p2p else [])
    for t in rows:
        if not t.ok:
            add(f"{t.label:<20}  FAILED: {(t.error or 'no runs').splitlines()[0]}")
            continue
        pct = f"{100 * t.mbps / raw.mbps:.0f}%" if raw is not None and raw.ok else "-"
        split = f"{t.cpu_per_gb('client'):.2f}+{t.cpu_per_gb('server'):.2f}"
        sysload = (f"{100 * t.system_median('busy'):.0f}/{100 * t.other_share():.0f}/"
                   f"{100 * t.system_median('iowait'):.0f}")
        walls = [r.wall for r in t.runs]
        spread = f"{min(walls):.2f}-{max(walls):.2f}"
        add(f"{t.label:<20}{t.median_s:>10.3f}{spread:>13}{t.mbps:>10.1f}{pct:>8}{t.cpu_per_gb():>10.2f}"
            f"{split:>14}{t.rss_client_mib:>13.1f}{t.rss_server_mib:>13.1f}{sysload:>17}")
    noisy = [f"{t.label} {100 * t.other_share():.0f}%" for t in rows
             if t.ok and t.other_share() > 0.1]
    if noisy:
        add(f"WARNING: processes not measured here used a noticeable share of the machine's "
            f"CPU during the timed copies ({', '.join(noisy)}); numbers are noisy, rerun on an "
            "idle machine (--json lists the top processes per run)")
    if p2p is not None:
        add("")
        if p2p.publish:
            pub = p2p.publish
            j = pub["json"]
            rate = pub.get("hash_gb_per_s")
            add(f"publish: JSON bytes={j.get('bytes')} seconds={j.get('seconds')} -> hashing "
                + (f"{rate:.2f} GB/s" if rate is not None else "n/a")
                + f"; whole command {pub['wall_seconds']:.2f} s ({pub['wall_gb_per_s']:.2f} GB/s),"
                f" cpu {pub['cpu_seconds']:.2f} s, peak RSS {pub['peak_rss_mib']:.0f} MiB")
        for n, pull in p2p.pulls.items():
            if pull.ok:
                ratios = []
                for name in ("scp", "rsync", "raw"):
                    base = tools.get(name)
                    if base is not None and base.ok:
                        ratios.append(f"/{name} {pull.mbps / base.mbps:.2f}x")
                own = [r.extra.get("seconds") for r in pull.runs]
                add(f"p2pckpt x{n} throughput ratio: {', '.join(ratios) or 'no baselines'}; "
                    f"pull's own 'seconds': {own}")
        if p2p.error:
            add(f"p2pckpt FAILED: {p2p.error.splitlines()[0]}")
    for t in rows:
        for note in t.notes:
            if "downloaded" in note:
                add(f"note ({t.label}): {note}")
    if targets:
        add("")
        add("targets:")
        for tg in targets:
            add(f"  [{tg.status()}] {tg.name:<46} {tg.shown}")
    add("")
    add("counted: client CPU/RSS = wait4 of the client process and its reaped children; "
        "server CPU = /proc tree delta (utime+stime+cutime+cstime) of our sshd or "
        "p2pckpt serve; server RSS = VmHWM (sshd: sampled over per-connection processes); "
        "busy/other/iow% = machine-wide CPU busy share, share busy with processes not "
        "measured here (noise), iowait share, during the timed copies (median, /proc/stat).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


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
        raise BenchError(f"not enough space: {best} has {human_bytes(free)} free, "
                         f"need {human_bytes(need)}; pass --workdir or a smaller --size")
    return Path(tempfile.mkdtemp(prefix="p2pckpt-bench-", dir=best)), True


def prepare_checkpoint(workdir: Path, size: int) -> Path:
    ckpt = workdir / f"ckpt-{size}"
    marker = workdir / f"ckpt-{size}.done"
    if marker.exists() and ckpt.is_dir():
        try:
            if json.loads(marker.read_text()).get("layout") == LAYOUT_VERSION:
                log(f"reusing checkpoint {ckpt}")
                return ckpt
        except ValueError:
            pass
    if ckpt.exists():
        shutil.rmtree(ckpt)
    marker.unlink(missing_ok=True)
    log(f"generating {human_bytes(size)} checkpoint in {ckpt}")
    t0 = time.perf_counter()
    # In a child, so that this process stays small (children inherit its RSS high-water mark).
    run([sys.executable, Path(__file__).resolve(), "_generate", ckpt, size],
        "generate checkpoint", 120 + size / (20 * MB))
    os.sync()  # flush writeback now, so it does not run during the first measurements
    log(f"generated in {time.perf_counter() - t0:.1f} s")
    marker.write_text(json.dumps({"layout": LAYOUT_VERSION, "size": size}))
    return ckpt


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark p2pckpt pull against scp, rsync and a raw loopback copy.",
        epilog="See the module docstring for what exactly is counted.",
    )
    p.add_argument("--size", type=parse_size, default=2 * GIB,
                   help="checkpoint size, e.g. 2GiB (default), 512MiB, 1GB")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per tool (default 3)")
    p.add_argument("--streams", type=parse_streams, default=[4],
                   help="p2pckpt pull --streams, a number or a list like 1,2,4 (default 4)")
    p.add_argument("--skip-ssh", action="store_true", help="skip the scp and rsync baselines")
    p.add_argument("--skip-p2pckpt", action="store_true", help="skip p2pckpt (baselines only)")
    p.add_argument("--skip-raw", action="store_true", help="skip the raw loopback ceiling")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to generate the checkpoint (kept there for reuse) and scratch "
                        "files (removed); default: a temporary dir under /var/tmp or /tmp")
    p.add_argument("--p2pckpt-bin", type=Path, default=Path(sys.executable).parent / "p2pckpt",
                   help="p2pckpt console script (default: next to sys.executable)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (tables go to stderr)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_raw_recv":
        return _raw_recv_main(*argv[1:4])
    if argv and argv[0] == "_raw_send":
        return _raw_send_main(*argv[1:4])
    if argv and argv[0] == "_generate":
        generate_checkpoint(Path(argv[1]), int(argv[2]))
        return 0
    args = parse_args(argv)

    def _on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    size: int = args.size
    timeout = 120.0 + size / (20 * MB)  # generous: 20 MB/s floor plus set-up
    need = 3 * size + 512 * MIB
    workdir: Path | None = None
    ours = False
    scratch: Path | None = None
    ssh: SshServer | None = None
    tools: dict[str, ToolResult] = {}
    p2p: P2pResults | None = None
    env_info: dict[str, Any] = {
        "cpus": os.cpu_count(), "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "peak_rss_method": "GNU time %M of the client command" if GNU_TIME else
        "wait4 ru_maxrss (floor = this script's own peak RSS)",
    }
    failed = False
    try:
        with SystemCpu() as idle_check:
            time.sleep(1.0)
        env_info["busy_before_start"] = idle_check.result["busy"]
        if idle_check.result["busy"] > 0.2:
            log(f"WARNING: the machine is {100 * idle_check.result['busy']:.0f}% busy before "
                "the benchmark starts; results will be noisy (see the 'other' column)")
        workdir, ours = choose_workdir(args.workdir, need)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
        ckpt = prepare_checkpoint(workdir, size)
        files = checkpoint_files(ckpt)
        nbytes = sum(s for _, s in files)
        ckpt_info = {"path": str(ckpt), "files": len(files), "bytes": nbytes,
                     "requested_size": size}

        if not args.skip_raw:
            tools["raw"] = bench_raw(ckpt, scratch, nbytes, args.repeat, False, timeout)
            tools["raw+fsync"] = bench_raw(ckpt, scratch, nbytes, args.repeat, True, timeout)

        if not args.skip_ssh:
            try:
                exes = ensure_ssh_tools()
                user = pwd.getpwuid(os.getuid()).pw_name
                ssh = SshServer(exes, scratch / "sshd", user)
                ssh.start()
                info = ssh.describe()
                major = re.search(r"OpenSSH_(\d+)", info.get("ssh_version", ""))
                info["scp_mode"] = ("SFTP (OpenSSH >= 9 default)"
                                    if major and int(major.group(1)) >= 9 else "legacy scp/rcp")
                env_info["ssh"] = info
                log(f"ssh cipher: default {info['cipher_default']}, negotiated "
                    f"{info.get('cipher_negotiated', '?')}")
                server = ssh
                tools["scp"] = bench_ssh_tool(
                    "scp", server,
                    lambda d: [exes["scp"], "-r", "-q", *server.client_opts(),
                               "-P", str(server.port), f"{server.target}:{ckpt}", str(d)],
                    nbytes, scratch, args.repeat, timeout)
                rsh = shlex.join(server.ssh_argv())
                tools["rsync"] = bench_ssh_tool(
                    "rsync", server,
                    lambda d: [exes["rsync"], "-a", "-e", rsh, f"{server.target}:{ckpt}/",
                               f"{d}/"],
                    nbytes, scratch, args.repeat, timeout)
            except BenchError as exc:
                log(f"ssh baselines FAILED: {exc}")
                for name in ("scp", "rsync"):
                    tools.setdefault(name, ToolResult(name, nbytes, error=str(exc)))
            finally:
                if ssh is not None:
                    ssh.stop()

        if not args.skip_p2pckpt:
            p2p = bench_p2pckpt(args.p2pckpt_bin, ckpt, scratch, nbytes, args.streams,
                                args.repeat, timeout)

        targets = evaluate_targets(tools, p2p)
        failed = any(t.error for t in tools.values()) or (
            p2p is not None and (p2p.error is not None or any(t.error for t in p2p.pulls.values()))
        )
        text = render(ckpt_info, env_info, tools, p2p, targets, args.repeat)
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            doc = {
                "checkpoint": ckpt_info, "environment": env_info,
                "config": {"size": size, "repeat": args.repeat, "streams": args.streams},
                "tools": {k: v.to_json() for k, v in tools.items()},
                "p2pckpt": None if p2p is None else {
                    "error": p2p.error, "publish": p2p.publish,
                    "pull": {str(n): t.to_json() for n, t in p2p.pulls.items()},
                },
                "targets": [{"name": t.name, "value": t.value, "threshold": t.threshold,
                             "status": t.status().strip(), "shown": t.shown} for t in targets],
            }
            print(json.dumps(doc, indent=2, default=str))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        failed = True
    finally:
        REAPER.stop_all()
        if ssh is not None:
            ssh.stop()
        if workdir is not None:
            target = workdir if ours else scratch
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
                log(f"removed {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
