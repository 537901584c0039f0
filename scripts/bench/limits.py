"""The machine's limits, measured in the same run: disk write (``dd ... conv=fsync``), disk
read (``dd`` of a checkpoint file after dropping the page cache), AES-GCM and BLAKE3 rates
on one core (and BLAKE3 on all cores), in a helper process (``_cpu_rates``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import BenchError, log
from .cache import can_drop, drop_caches
from .procs import helper_argv, run
from .units import GB, MIB

DD_BLOCK = 4 * MIB
RATE_SECONDS = 0.7  # per rate measured in the helper
AES_RECORDS = (64 * 1024, 1 * MIB)
BLAKE3_BUFFER = 64 * MIB


def _rate(fn: Any, nbytes: int, seconds: float = RATE_SECONDS) -> float:
    """GB/s of ``fn()`` (which processes ``nbytes``), repeated for about ``seconds``."""
    fn()  # warm up (allocations, key schedule, thread pool)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
        fn()
        n += 1
    return n * nbytes / GB / elapsed


def cpu_rates_main() -> int:
    """Helper: print one JSON object of single-core AES-GCM and BLAKE3 rates (GB/s)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out: dict[str, Any] = {}
    for bits in (128, 256):
        aead = AESGCM(AESGCM.generate_key(bit_length=bits))
        for record in AES_RECORDS:
            data, nonce = os.urandom(record), os.urandom(12)
            key = f"aes{bits}gcm_{record // 1024}KiB_gb_per_s"
            out[key] = _rate(lambda a=aead, d=data, n=nonce: a.encrypt(n, d, None), record)
    try:
        import blake3
    except ImportError as exc:
        out["blake3_error"] = str(exc)
    else:
        buf = os.urandom(BLAKE3_BUFFER)
        out["blake3_1thread_gb_per_s"] = _rate(lambda: blake3.blake3(buf).digest(), len(buf))
        auto = blake3.blake3.AUTO
        out["blake3_mt_gb_per_s"] = _rate(
            lambda: blake3.blake3(buf, max_threads=auto).digest(), len(buf)
        )
        out["blake3_mt_threads"] = os.cpu_count()
    print(json.dumps(out), flush=True)
    return 0


def _dd_rate(stderr: str, nbytes: int, wall: float) -> float:
    """GB/s from dd's own ``... copied, S s, ...`` line, else from our wall time."""
    for line in stderr.splitlines():
        if "copied" in line:
            parts = [p.strip() for p in line.split(",")]
            for part in parts:
                if part.endswith(" s"):
                    return nbytes / GB / float(part[:-2])
    return nbytes / GB / wall


def dd_write(scratch: Path, nbytes: int, timeout: float) -> dict[str, Any]:
    """``dd if=/dev/zero of=FILE bs=4M count=N conv=fsync``: the disk's durable write rate."""
    count = max(1, nbytes // DD_BLOCK)
    path = scratch / "dd-write.bin"
    argv = ["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={count}", "conv=fsync"]
    try:
        t0 = time.perf_counter()
        cp = run(argv, "dd write", timeout)
        wall = time.perf_counter() - t0
    finally:
        path.unlink(missing_ok=True)
    n = count * DD_BLOCK
    return {"argv": argv, "bytes": n, "gb_per_s": _dd_rate(cp.stderr, n, wall)}


def dd_read_cold(path: Path, timeout: float) -> dict[str, Any]:
    """``dd if=FILE of=/dev/null bs=4M`` after dropping the page cache: the disk's read rate."""
    why = can_drop()
    if why is not None:
        return {"skipped": f"cannot drop caches: {why}"}
    argv = ["dd", f"if={path}", "of=/dev/null", "bs=4M"]
    drop_caches()
    t0 = time.perf_counter()
    cp = run(argv, "dd read", timeout)
    wall = time.perf_counter() - t0
    n = path.stat().st_size
    return {"argv": argv, "bytes": n, "gb_per_s": _dd_rate(cp.stderr, n, wall)}


def measure_limits(scratch: Path, read_file: Path, write_bytes: int) -> dict[str, Any]:
    """All limits; a failing part is recorded as ``{"error": ...}`` and does not stop the run."""
    out: dict[str, Any] = {}
    timeout = 120 + write_bytes / (20 * 1e6)
    steps = (
        ("dd_write_fsync", lambda: dd_write(scratch, write_bytes, timeout)),
        ("dd_read_cold", lambda: dd_read_cold(read_file, timeout)),
        ("cpu", lambda: json.loads(run(helper_argv("_cpu_rates"), "cpu rates", 120).stdout)),
    )
    for key, fn in steps:
        try:
            out[key] = fn()
        except (BenchError, ValueError) as exc:
            out[key] = {"error": str(exc)}
            log(f"limit {key} FAILED: {exc}")
        else:
            log(f"limit {key}: {json.dumps(out[key])}")
    return out
