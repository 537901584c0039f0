#!/usr/bin/env python3
"""Soak a seeder with pulls that end badly, then check it is as good as new.

One ``p2pckpt serve`` (real process, 127.0.0.1) offers a checkpoint of
``--size`` bytes; ``--pulls`` pulls of it are ended at random moments,
``--concurrency`` at a time, each in one of these ways:

* ``kill``: a real ``p2pckpt pull`` process, SIGKILL-ed 0.1-1.2 s in;
* ``int``: the same, SIGINT-ed (a Ctrl-C);
* ``drop``: a client that asks for every chunk, reads a little, and resets
  the TCP connection (SO_LINGER 0);
* ``stall``: a client that asks for chunks on several connections and
  never reads, until it gives up 0.5-3 s later;

mixed with a pre-auth flood (idle sockets that never handshake). Before
and after, a fresh pull is timed, and the seeder's RSS (``VmRSS``) and open
file descriptors are read from ``/proc`` (after warm-up pulls and a first
round of bad endings). The seeder passes if the fresh pull
completes, at a speed near the baseline, and RSS and fds come back to
baseline (R-66, issue 14)::

    python scripts/soak.py --pulls 200 --concurrency 6 --size 64MiB

Exit status 0 on a pass, 1 on a failure; every process and temporary file
is cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio
import trio.lowlevel

CLI = [sys.executable, "-m", "p2pckpt"]
MAX_CHUNK_BUFFERS = 16  # the seeder's (p2pckpt.transfer.serve), each up to a 4 MiB chunk
KINDS = ("kill", "int", "drop", "stall")
UPLOAD = 60_000_000  # bytes/s: long enough pulls that endings land mid-transfer
MIB = 1 << 20


@dataclass
class SoakReport:
    pulls: int
    endings: Counter[str]
    baseline_seconds: float
    after_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    fds_before: int
    fds_after: int
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        rate = self.after_seconds / self.baseline_seconds if self.baseline_seconds else 0.0
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.endings.items()))
        return [
            f"pulls ended badly: {self.pulls} ({kinds}) in {self.seconds:.1f} s",
            f"fresh pull: before {self.baseline_seconds:.2f} s, after {self.after_seconds:.2f} s"
            f" ({rate:.2f}x)",
            f"seeder RSS: before {self.rss_before_kib / 1024:.1f} MiB,"
            f" after {self.rss_after_kib / 1024:.1f} MiB",
            f"seeder open fds: before {self.fds_before}, after {self.fds_after}",
            "PASS" if self.ok else "FAIL: " + "; ".join(self.problems),
        ]


def _cli(home: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [*CLI, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"p2pckpt {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _start_serve(home: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    """``serve`` on a free port; its stderr goes to ``log`` (the caller closes
    ``proc.stdout`` and ``proc.stderr`` files at the end)."""
    with open(log, "w") as err:  # the child keeps its own descriptor
        proc = _popen_serve(home, err)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
            break
        line = proc.stdout.readline()
        found = re.search(r"listening on [0-9.]+:(\d+)", line)
        if found:
            return proc, int(found.group(1))
        if not line:
            break
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    raise RuntimeError(f"serve did not start: {log.read_text()}")


def _popen_serve(home: Path, err: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "--home", str(home), "serve", "--listen", "127.0.0.1:0", "--no-mdns"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _timed_pull(pristine: Path, addr: str, dest: Path) -> float:
    """A pull by a fresh copy of the puller's home (nothing to reuse), timed."""
    home = dest.with_name(dest.name + "-home")
    shutil.copytree(pristine, home)
    started = time.monotonic()
    doc = json.loads(_cli(home, "pull", "m", "--from", addr, "-o", str(dest), "--json"))
    took = time.monotonic() - started
    if doc["bytes_downloaded"] != doc["bytes_total"]:
        raise RuntimeError("the timed pull reused bytes: not a fresh pull")
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    if dest.exists():
        dest.unlink()
    return took


async def _settle(pid: int, fds: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until the seeder is back to ``fds`` open descriptors."""
    with trio.move_on_after(timeout):
        while _fds(pid) > fds:  # noqa: ASYNC110 -- another process: no event to wait on
            await trio.sleep(0.1)


class _Driver:
    def __init__(self, puller: Path, addr: tuple[str, int], rng: random.Random) -> None:
        self.puller = puller
        self.addr = addr
        self.rng = rng
        self.count = 0
        self.endings: Counter[str] = Counter()

    async def pull_process(self, sig: int) -> None:
        dest = self.puller.parent / "dests" / f"d{self.count}"
        self.count += 1
        argv = [*CLI, "--home", str(self.puller), "pull", "m", "--from"]
        argv += [f"{self.addr[0]}:{self.addr[1]}", "-o", str(dest)]
        proc = await trio.lowlevel.open_process(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await trio.sleep(self.rng.uniform(0.1, 1.2))
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with trio.fail_after(30):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(dest.parent / f".{dest.name}.p2pckpt-partial", ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)

    async def hostile(self, kind: str) -> None:
        from p2pckpt.errors import P2pckptError
        from p2pckpt.home import Home
        from p2pckpt.manifest.manifest import verify
        from p2pckpt.transfer.peer import connect_direct
        from p2pckpt.wire import messages as m

        home = Home.open(self.puller)
        conns = []
        try:
            for _ in range(1 if kind == "drop" else self.rng.randint(2, 6)):
                conns.append(await connect_direct(home, self.addr))
            for conn in conns:
                reply = await conn.request(m.ManifestRequest("m", None))
                assert isinstance(reply, m.ManifestResponse)
                manifest = verify(reply.envelope)
                for req_id in range(min(m.MAX_OUTSTANDING, manifest.chunk_count * 4)):
                    await conn.send(
                        m.ChunkRequest(req_id, manifest.root, req_id % manifest.chunk_count)
                    )
            if kind == "drop":
                with trio.move_on_after(self.rng.uniform(0.05, 0.5)):
                    while True:
                        await conns[0].receive()
                sock = conns[0].secure.transport.socket  # type: ignore[attr-defined]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                await trio.sleep(self.rng.uniform(0.5, 3.0))
        except (P2pckptError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the seeder may drop a client that does not read: that is the point
        finally:
            for conn in conns:
                await conn.aclose()
        home.catalog.close()

    async def flood(self) -> None:
        """Idle pre-auth sockets from another address, held a moment."""
        socks = []
        try:
            for _ in range(16):
                s = trio.socket.socket()
                await s.bind(("127.0.0.2", 0))
                with contextlib.suppress(OSError):
                    await s.connect(self.addr)
                socks.append(s)
            await trio.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            for s in socks:
                s.close()

    async def one(self, limit: trio.CapacityLimiter) -> None:
        async with limit:
            kind = self.rng.choice(KINDS)
            self.endings[kind] += 1
            if kind == "kill":
                await self.pull_process(signal.SIGKILL)
            elif kind == "int":
                await self.pull_process(signal.SIGINT)
            else:
                await self.hostile(kind)


async def _run_endings(driver: _Driver, pulls: int, concurrency: int) -> None:
    limit = trio.CapacityLimiter(concurrency)
    async with trio.open_nursery() as nursery:
        for i in range(pulls):
            nursery.start_soon(driver.one, limit)
            if i % 25 == 0:
                nursery.start_soon(driver.flood)
            await trio.lowlevel.checkpoint()


def soak(root: Path, pulls: int, concurrency: int, size: int, seed: int = 1) -> SoakReport:
    """Run the soak in ``root`` (created); returns the report."""
    rng = random.Random(seed)
    seeder, puller = root / "A", root / "B"
    a_id = _cli(seeder, "init").strip()
    b_id = _cli(puller, "init").strip()
    for home in (seeder, puller):
        (home / "config.toml").write_text("[discovery]\nmdns = false\n")
    (seeder / "config.toml").write_text(f"[discovery]\nmdns = false\n[limits]\nupload = {UPLOAD}\n")
    _cli(seeder, "trust", "add", b_id)
    _cli(puller, "trust", "add", a_id, "--role", "publish")
    pristine = root / "B0"
    shutil.copytree(puller, pristine)  # before any pull: timed pulls start from it
    data = root / "m.bin"
    with open(data, "wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))
        f.write(rng.randbytes(size % MIB))
    _cli(seeder, "publish", str(data), "--name", "m")
    (root / "dests").mkdir()
    proc, port = _start_serve(seeder, root / "serve.log")
    addr = f"127.0.0.1:{port}"
    try:
        # Warm up: concurrent pulls, so every chunk buffer exists before the baseline.
        warm = [
            subprocess.Popen([*CLI, "--home", str(puller), "pull", "m", "--from", addr,
                              "-o", str(root / "dests" / f"warm{i}")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(4)
        ]  # fmt: skip
        for w in warm:
            w.wait(300)
        for i in range(4):
            (root / "dests" / f"warm{i}").unlink(missing_ok=True)
        fds_idle = _fds(proc.pid)
        driver = _Driver(puller, ("127.0.0.1", port), rng)
        # ... and a first round of bad endings: the chunk-buffer pool fills to
        # its cap (bounded, not a leak); the baseline is what comes after it.
        trio.run(_run_endings, driver, max(8, pulls // 5), concurrency)
        trio.run(_settle, proc.pid, fds_idle)
        baseline = _timed_pull(pristine, addr, root / "dests" / "base")
        rss_before, fds_before = _status_kib(proc.pid, "VmRSS"), _fds(proc.pid)
        driver.endings.clear()
        started = time.monotonic()
        trio.run(_run_endings, driver, pulls, concurrency)
        seconds = time.monotonic() - started
        trio.run(_settle, proc.pid, fds_before)
        after = _timed_pull(pristine, addr, root / "dests" / "after")
        rss_after, fds_after = _status_kib(proc.pid, "VmRSS"), _fds(proc.pid)
        report = SoakReport(
            pulls, driver.endings, baseline, after, rss_before, rss_after,
            fds_before, fds_after, seconds,
        )  # fmt: skip
        if proc.poll() is not None:
            report.problems.append("the seeder died")
        if fds_after > fds_before:
            report.problems.append(f"{fds_after - fds_before} fds more than at the start")
        # The chunk-buffer pool (MAX_CHUNK_BUFFERS x the chunk size) fills and
        # empties as connections come and go: RSS swings by up to that much.
        pool_kib = MAX_CHUNK_BUFFERS * 4 * 1024
        if rss_after > rss_before + pool_kib + 16 * 1024:
            report.problems.append("RSS grew by more than the chunk-buffer pool + 16 MiB")
        if after > 2 * baseline + 1.0:
            report.problems.append("the fresh pull after the soak was over 2x slower")
        return report
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    match = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match[1]) * units.get(match[2], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pulls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--size", type=_size, default=64 * MIB)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pckpt-soak-") as tmp:
        report = soak(Path(tmp), args.pulls, args.concurrency, args.size, args.seed)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
