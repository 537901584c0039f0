"""The raw loopback ceiling: ``sendfile`` over one TCP connection to ``recv_into`` + ``write``,
in two helper processes (the entry script's ``_raw_send`` / ``_raw_recv``)."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from . import BenchError
from .checkpoint import checkpoint_files
from .procfs import SystemCpu
from .procs import MeasuredProc, helper_argv, run_measured
from .results import Job, Run, ToolResult, repeat_runs
from .units import MIB

RAW_BUFFER_BYTES = 1 * MIB


def recv_main(dest: str, listing: str, fsync: str) -> int:
    """Helper: print a port, accept one connection, write the listed files under ``dest``."""
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


def send_main(port: str, src: str, listing: str) -> int:
    """Helper: ``sendfile`` the listed files under ``src`` to 127.0.0.1:``port``."""
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


def bench_raw(job: Job, fsync: bool) -> ToolResult:
    label = "raw loopback" + (" +fsync" if fsync else "")
    result = ToolResult(label, job.nbytes, family="raw+fsync" if fsync else "raw")
    result.notes.append("python sendfile -> recv_into+write, 1 TCP connection on 127.0.0.1")
    listing = job.scratch / "raw-files.json"
    listing.write_text(json.dumps(checkpoint_files(job.ckpt)))

    def one(dest: Path, _tag: str) -> Run:
        argv = helper_argv("_raw_recv", dest, listing, "1" if fsync else "0")
        recv = MeasuredProc(argv, stdout=subprocess.PIPE)
        try:
            assert recv.proc.stdout is not None
            port = read_line(recv.proc.stdout, 30).strip()
            if not port.isdigit():
                raise BenchError(f"raw receiver did not report a port (got {port!r})")
            with SystemCpu() as system:
                t0 = time.perf_counter()
                send = run_measured(helper_argv("_raw_send", port, job.ckpt, listing), job.timeout)
                got = recv.wait(job.timeout)
                wall = time.perf_counter() - t0
            send.check("raw sender")
            got.check("raw receiver")
        finally:
            recv.close()
            if recv.proc.stdout is not None:
                recv.proc.stdout.close()
        extra = {"system": system.result}
        return Run(wall, got.cpu, send.cpu, got.maxrss_kib, send.maxrss_kib, extra)

    return repeat_runs(result, job, label, one)
