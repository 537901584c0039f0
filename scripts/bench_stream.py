"""Streaming publish (issue 21, item 1): end to end, trainer to follower.

A writer process (``tests/e2e/shard_writer.py``) writes a 4-shard safetensors
checkpoint at a steady rate into a folder a publisher daemon watches
(``complete = "index"``); a follower daemon follows the name. The clock runs
from the writer's first byte to the follower's ``current`` pointing at the
verified version (its hook has not run yet: switching is the end). Each link
rate runs twice in the same run: **today** (``stream = false``: the follower
waits for the whole folder, then pulls) and **stream** (``stream = true``:
finished shards are prefetched under a signed in-progress manifest).

The link is shaped with the follower's own download cap (``[limits]
download``), not tc on a veth pair: namespaces need root and cost setup time
on a shared 2-core box; the cap paces the real pull over real loopback
sockets, so the overlap being measured is the same. Target: stream end to end
<= max(write, transfer) + one shard's transfer, at a link slower and at one
faster than the writer.

    python scripts/bench_stream.py        # 2 GiB, writer 50 MB/s, links 25 and 100 MB/s
    python scripts/bench_stream.py --size 256MiB --links 25MB,100MB
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.nodes import run, start_daemon  # noqa: E402

MB = 1_000_000


def parse_size(text: str) -> int:
    units = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "GB": 10**9, "MB": 10**6, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def one_run(work: Path, total: int, write_rate: int, link: int, stream: bool) -> dict[str, float]:
    a, b = work / "A", work / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--role", "pull", "--role", "publish")
    ckpts, models = work / "ckpts", work / "models"
    ckpts.mkdir()
    acfg, bcfg = work / "a.toml", work / "b.toml"
    acfg.write_text(
        f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[transfer]\ncompress = "off"\n'
        f'[[watch]]\npath = "{ckpts}"\nname = "m"\ncomplete = "index"\n'
        f"stream = {'true' if stream else 'false'}\n"
    )
    servers = [start_daemon(a, work / "a.log", acfg)]
    try:
        bcfg.write_text(
            f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
            f"[limits]\ndownload = {link}\n"
            f'[[peer]]\nid = "{a_id}"\naddr = "{servers[0].addr}"\n'
            f'[[follow]]\nname = "m"\ndir = "{models}"\n'
        )
        servers.append(start_daemon(b, work / "b.log", bcfg))
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
        while not os.path.islink(current):
            if written is None and writer.poll() is not None:
                written = time.monotonic() - started
            if time.monotonic() - started > 3600:
                raise SystemExit("no current after an hour")
            time.sleep(0.02)
        end = time.monotonic() - started
        writer.wait()
        written = written if written is not None else end
        return {"write": written, "end": end}
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--write-rate", default="50MB", help="the writer's steady rate, per second")
    ap.add_argument("--links", default="25MB,100MB", help="follower download caps, per second")
    args = ap.parse_args()
    total, rate = parse_size(args.size), parse_size(args.write_rate)
    print(f"4 shards, {total / MB:.0f} MB, writer {rate / MB:.0f} MB/s, link = follower's cap")
    print(
        f"{'link MB/s':>9} {'mode':>6} {'write s':>8} {'xfer s':>7} {'end s':>7} "
        f"{'target s':>8} {'ok':>3}"
    )
    for link in (parse_size(x) for x in args.links.split(",")):
        transfer, shard_transfer = total / link, total / 4 / link
        for stream in (False, True):
            with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
                got = one_run(Path(tmp), total, rate, link, stream)
            target = max(got["write"], transfer) + shard_transfer
            ok = "yes" if got["end"] <= target else "no"
            mode = "stream" if stream else "today"
            print(
                f"{link / MB:9.0f} {mode:>6} {got['write']:8.1f} {transfer:7.1f} "
                f"{got['end']:7.1f} {target:8.1f} {ok if stream else '-':>3}",
                flush=True,
            )


if __name__ == "__main__":
    main()
