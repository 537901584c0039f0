"""Real ``p2pckpt`` processes for end-to-end tests (127.0.0.1 only).

Every process is started with a deadline and killed at teardown; waits poll
real conditions (a "listening on" line, a process exit), never sleep blindly.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CLI = [sys.executable, "-m", "p2pckpt"]
TIMEOUT = 120.0


def run(
    home: Path,
    *args: str,
    check: bool = True,
    timeout: float = TIMEOUT,
    prefix: list[str] | None = None,
    cli: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion (``prefix``: e.g. ip netns exec NS;
    ``cli``: another command than this checkout's, e.g. an older release)."""
    proc = subprocess.run(
        [*(prefix or []), *(cli or CLI), "--home", str(home), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,  # no test answers a prompt: never the runner's terminal
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"p2pckpt {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def run_json(home: Path, *args: str, cli: list[str] | None = None) -> Any:
    return json.loads(run(home, *args, "--json", cli=cli).stdout)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    log_file: Any
    host: str = "127.0.0.1"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log_file.close()
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None


def read_until(stream: IO[str], pattern: str, timeout: float) -> tuple[re.Match[str] | None, str]:
    """Read a child's pipe until a line matches ``pattern`` (the match, and
    every line read), or until ``timeout`` or end of file (None). Raw reads,
    split here: a buffered readline() may take two lines at once, and
    select() would then wait for a line already read."""
    deadline = time.monotonic() + timeout
    fd, pending, seen = stream.fileno(), b"", ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, 65536)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            seen += line + "\n"
            found = re.search(pattern, line)
            if found:
                return found, seen
    return None, seen


def start_server(
    home: Path,
    log: Path,
    *,
    listen: str = "127.0.0.1:0",
    extra: tuple[str, ...] = ("--no-mdns",),
    prefix: list[str] | None = None,
    command: tuple[str, ...] = ("serve",),
    banner: str = r"listening on [0-9.]+:(\d+)",
    cli: list[str] | None = None,
) -> Server:
    """Start ``serve`` (or another long-running command) and wait for its banner."""
    err = open(log, "w")  # noqa: SIM115 - owned by the process' lifetime
    argv = [*(cli or CLI), "--home", str(home), "-v", *command, "--listen", listen, *extra]
    proc = subprocess.Popen(
        [*(prefix or []), *argv],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    # A loaded 2-core machine can take 30 s to start one.
    found, _ = read_until(proc.stdout, banner, 60)
    if found:
        return Server(proc, int(found.group(1)), log, err, listen.rpartition(":")[0])
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    err.close()
    raise AssertionError(f"server did not start: {log.read_text()}")


def start_daemon(home: Path, log: Path, config: Path) -> Server:
    """Start ``p2pckpt daemon --config CONFIG`` and wait for its banner."""
    return start_server(
        home,
        log,
        command=("daemon", "--config", str(config)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll a real condition every 50 ms until it holds (its value, truthy),
    or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_relay(root: Path, log: Path, *extra: str) -> Server:
    """A ``p2pckpt relay`` on 127.0.0.1 (its home under ``root``)."""
    return start_server(
        root / "R",
        log,
        extra=extra,
        command=("relay",),
        banner=r"relay listening on [0-9.]+:(\d+)",
    )


@dataclass
class Pair:
    """Two initialised nodes that trust each other: A publishes, B pulls."""

    root: Path
    a: Path
    b: Path
    a_id: str
    b_id: str
    servers: list[Server] = field(default_factory=list)

    def serve_a(self) -> Server:
        server = start_server(self.a, self.root / f"serve-{len(self.servers)}.log")
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()


def no_mdns(home: Path) -> None:
    """Tests in the root namespace must not multicast onto the host's LAN."""
    (home / "config.toml").write_text("[discovery]\nmdns = false\n")


def make_pair(root: Path) -> Pair:
    a, b = root / "A", root / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    no_mdns(a)
    no_mdns(b)
    run(
        a,
        "trust",
        "add",
        b_id,
        "--name",
        "b",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    run(
        b,
        "trust",
        "add",
        a_id,
        "--name",
        "a",
        "--role",
        "pull",
        "--role",
        "publish",
        "--role",
        "push",
    )
    return Pair(root, a, b, a_id, b_id)


def make_checkpoint(path: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    """A sharded checkpoint directory of pseudo-random, distinct bytes."""
    import random

    rng = random.Random(seed)
    path.mkdir(parents=True)
    for name, size in sizes.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(size))
    return path


def iter_files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def same_tree(a: Path, b: Path) -> bool:
    fa = [p.relative_to(a) for p in iter_files(a)]
    fb = [p.relative_to(b) for p in iter_files(b)]
    return fa == fb and all((a / r).read_bytes() == (b / r).read_bytes() for r in fa)
