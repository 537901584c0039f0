"""Streaming publish (issue 21, item 1): end to end, trainer to follower.

A writer process (``tests/e2e/shard_writer.py``) writes a 4-shard safetensors
checkpoint at a steady rate into a folder a publisher daemon watches
(``complete = "index"``); a follower daemon follows the name. The clock runs
from the writer's start to the follower's ``current`` pointing at the
verified version (its hook has not run yet: switching is the end). Each link
rate runs in both modes in the same run: **today** (``stream = false``: the
follower waits for the whole folder, then pulls) and **stream** (``stream =
true``: finished shards are prefetched under a signed in-progress manifest).

The link (``--shape tc``, the default when run as root): the two daemons
run in two network namespaces this script creates, joined by a veth pair
whose publisher end sends through tc ``tbf`` at the link rate (the
follower's requests go back unshaped); everything is removed at exit. The
rate caps what crosses the wire (TCP/IP headers and the channel's record
overhead included, about 2-3 %), while the target counts checkpoint bytes
only. ``--shape cap`` instead caps the follower's download (``[limits]
download``) over 127.0.0.1, as the first version of this script did.
Target: stream end to end <= max(write, transfer) + one shard's transfer,
at a link slower and at one faster than the writer. With ``--runs N`` each
cell is run N times and the median printed (the box is shared: noisy).

    sudo python scripts/bench_stream.py   # 2 GiB, writer 50 MB/s, links 25 and 100 MB/s, tc
    python scripts/bench_stream.py --size 256MiB --links 25MB,100MB --shape cap --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pckpt.config import parse_size  # noqa: E402 - 2GiB, 25MB, as the config takes them
from tests.e2e.nodes import Server, run, start_daemon, start_server  # noqa: E402

MB = 1_000_000


@contextlib.contextmanager
def shaped_link(rate: int) -> Iterator[tuple[list[str], list[str], str, str]]:
    """Two namespaces joined by a veth pair, the publisher's end shaped by
    tbf at ``rate`` bytes/s: (publisher's and follower's command prefix,
    their addresses). Removed at exit, even after a failure."""
    tag = f"bs{os.getpid() % 100000}"
    pub, fol = f"{tag}p", f"{tag}f"
    created: list[str] = []

    def ip(*args: str, ns: str | None = None) -> None:
        cmd = ["ip", *(["-n", ns] if ns else []), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=20)

    try:
        for ns in (pub, fol):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
            created.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        ip("link", "set", f"{tag}a", "netns", pub)
        ip("link", "set", f"{tag}b", "netns", fol)
        for ns, dev, addr in ((pub, f"{tag}a", "10.234.0.1"), (fol, f"{tag}b", "10.234.0.2")):
            ip("link", "set", dev, "name", "eth0", ns=ns)
            ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
        bits = rate * 8
        burst = max(64 << 10, rate // 100)  # 10 ms at the rate: enough for tbf at high rates
        subprocess.run(
            [
                *("ip", "netns", "exec", pub, "tc", "qdisc", "add", "dev", "eth0", "root"),
                *("tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"),
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )
        yield (
            ["ip", "netns", "exec", pub],
            ["ip", "netns", "exec", fol],
            "10.234.0.1",
            "10.234.0.2",
        )
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


def _daemon(home: Path, log: Path, config: Path, prefix: list[str] | None, addr: str) -> Server:
    if prefix is None:
        return start_daemon(home, log, config)
    return start_server(
        home,
        log,
        listen=f"{addr}:0",
        extra=(),
        prefix=prefix,
        command=("daemon", "--config", str(config)),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )


def one_run(
    work: Path, total: int, write_rate: int, link: int, stream: bool, shape: str
) -> dict[str, float]:
    pub_ns: list[str] | None
    fol_ns: list[str] | None
    with contextlib.ExitStack() as stack:
        if shape == "tc":
            pub_ns, fol_ns, pub_addr, fol_addr = stack.enter_context(shaped_link(link))
        else:
            pub_ns = fol_ns = None
            pub_addr = fol_addr = "127.0.0.1"
        return _one_run(
            work, total, write_rate, link, stream, (pub_ns, pub_addr), (fol_ns, fol_addr)
        )


def _one_run(
    work: Path,
    total: int,
    write_rate: int,
    link: int,
    stream: bool,
    pub: tuple[list[str] | None, str],
    fol: tuple[list[str] | None, str],
) -> dict[str, float]:
    a, b = work / "A", work / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--role", "pull", "--role", "publish")
    ckpts, models = work / "ckpts", work / "models"
    ckpts.mkdir()
    acfg, bcfg = work / "a.toml", work / "b.toml"
    acfg.write_text(
        f'[serve]\nlisten = "{pub[1]}:0"\n[discovery]\nmdns = false\n'
        f'[transfer]\ncompress = "off"\n'
        f'[[watch]]\npath = "{ckpts}"\nname = "m"\ncomplete = "index"\n'
        f"stream = {'true' if stream else 'false'}\n"
    )
    servers = [_daemon(a, work / "a.log", acfg, *pub)]
    try:
        cap = f"[limits]\ndownload = {link}\n" if fol[0] is None else ""
        bcfg.write_text(
            f'[serve]\nlisten = "{fol[1]}:0"\n[discovery]\nmdns = false\n{cap}'
            f'[[peer]]\nid = "{a_id}"\naddr = "{pub[1]}:{servers[0].port}"\n'
            f'[[follow]]\nname = "m"\ndir = "{models}"\n'
        )
        servers.append(_daemon(b, work / "b.log", bcfg, *fol))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        shard = total // 4
        started = time.monotonic()
        writer = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.e2e.shard_writer", str(ckpts / "step-100")),
                *("--shard-bytes", str(shard), "--rate", str(write_rate), "--index"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        current = models / "m" / "current"
        written = None
        try:
            while not os.path.islink(current):
                if written is None and writer.poll() is not None:
                    written = time.monotonic() - started
                if time.monotonic() - started > 3600:
                    raise SystemExit("no current after an hour")
                time.sleep(0.02)
            end = time.monotonic() - started
            writer.wait()
        finally:
            writer.kill()  # only if it is still running (interrupted)
            writer.wait()
        written = written if written is not None else end
        return {"write": written, "end": end}
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up (namespaces) on kill
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--write-rate", default="50MB", help="the writer's steady rate, per second")
    ap.add_argument("--links", default="25MB,100MB", help="link rates, per second")
    ap.add_argument(
        "--shape",
        choices=("tc", "cap"),
        default="tc" if os.geteuid() == 0 else "cap",
        help="tc: tbf on a veth pair between two namespaces (root); cap: [limits] download",
    )
    ap.add_argument("--runs", type=int, default=1, help="runs per cell (the median is shown)")
    ap.add_argument("--modes", default="today,stream")
    args = ap.parse_args()
    total, rate = parse_size(args.size), parse_size(args.write_rate)
    how = "tc tbf on a veth pair" if args.shape == "tc" else "the follower's download cap"
    print(
        f"4 shards, {total / MB:.0f} MB, writer {rate / MB:.0f} MB/s, link = {how},"
        f" median of {args.runs}"
    )
    print(
        f"{'link MB/s':>9} {'mode':>6} {'write s':>8} {'xfer s':>7} {'end s':>7} "
        f"{'target s':>8} {'ok':>3}  runs"
    )
    for link in (parse_size(x) for x in args.links.split(",")):
        transfer, shard_transfer = total / link, total / 4 / link
        for mode in args.modes.split(","):
            ends, writes = [], []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
                    got = one_run(Path(tmp), total, rate, link, mode == "stream", args.shape)
                ends.append(got["end"])
                writes.append(got["write"])
            end, write = statistics.median(ends), statistics.median(writes)
            target = max(write, transfer) + shard_transfer
            ok = "yes" if end <= target else "no"
            each = " ".join(f"{e:.1f}" for e in ends)
            print(
                f"{link / MB:9.0f} {mode:>6} {write:8.1f} {transfer:7.1f} "
                f"{end:7.1f} {target:8.1f} {ok if mode == 'stream' else '-':>3}  {each}",
                flush=True,
            )


if __name__ == "__main__":
    main()
