#!/usr/bin/env python3
"""Chunk packing benchmark (issue 7): what each codec does to weights and noise,
and what ``[transfer] compress = "auto"`` does to a pull, on a slow link and on
loopback.

What is measured
----------------
1. Codecs, in this process, one thread (as a seeder's worker thread packs): for
   bf16 weights, fp32 weights and random bytes, ``--chunks`` distinct 4 MiB chunks
   each, every codec of ``p2pckpt/wire/packing.py`` packs them (``pack``: byte
   grouping + zstd level 1) and unpacks them into a chunk-sized buffer (``unpack``,
   with every check the puller makes). One untimed warm-up pass, then ``--repeat``
   timed passes; the table shows the median. MB/s are chunk (raw) bytes per
   second; ratio is packed/raw. "pays below" is the link rate under which the
   policy would pack with it: ``speed / MARGIN`` when ``1 / ratio >= MARGIN``.

   Weights are N(0, 0.02) values like a trained layer's: generated with numpy
   (``standard_normal`` as float32 * 0.02; bf16 = the high 16 bits of each float32)
   when numpy is importable, else bf16 from the distribution's 256 quantiles
   (high byte) and uniform low bytes, fp32 with ``random.gauss`` into an
   ``array('f')``. Random bytes come from ``os.urandom``.

2. End to end: a safetensors checkpoint of ``--size`` bytes of bf16 weights
   (32 MiB tensors, so 4 MiB chunks) is published by a seeder and pulled
   (``pull --json``, default 2 streams) by a fresh puller home each run, with the
   seeder's ``[transfer] compress`` "auto" and "off":

   * over a link shaped to ``--rate`` (default 100mbit): seeder and puller each in
     a network namespace on one bridge, every link direction shaped with tc tbf
     (``bench/lan.py``; root only; ``--skip-netns`` to leave it out);
   * on plain loopback (127.0.0.1), where packing should stay off.

   Each cell is the median of ``--e2e-repeat`` pulls of the pull's own ``seconds``
   (manifest to committed copy), with its ``bytes_wire`` and the chunks the
   seeder packed (from its log). Every copy is compared with the original.

Usage::

    python scripts/bench_compress.py                      # codecs + 256 MiB end to end
    python scripts/bench_compress.py --skip-e2e --chunks 16 --repeat 7
    python scripts/bench_compress.py --size 1GiB --rate 200mbit --e2e-repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside us

from bench import BenchError, log
from bench_transfer import parse_size

from p2pckpt.transfer.packpolicy import MARGIN
from p2pckpt.wire import packing

CHUNK = 4 << 20
TENSOR = 32 << 20
CLI = [sys.executable, "-m", "p2pckpt"]
NAME = "bench-weights"


# -- data -------------------------------------------------------------------------------


def _numpy() -> Any:
    try:
        import numpy

        return numpy
    except ImportError:
        return None


def generator() -> str:
    return "numpy" if _numpy() is not None else "random+array (no numpy)"


def weights(n: int, width: int, seed: int) -> bytes:
    """``n`` bytes of little-endian bf16 (width 2) or fp32 (width 4) N(0, 0.02) values."""
    np = _numpy()
    count = n // width
    if np is not None:
        rng = np.random.default_rng(seed)
        f32 = rng.standard_normal(count, dtype=np.float32) * np.float32(0.02)
        if width == 4:
            return bytes(f32.tobytes())
        return bytes((f32.view(np.uint32) >> 16).astype("<u2").tobytes())
    rng2 = random.Random(seed)
    if width == 2:
        dist = statistics.NormalDist(0.0, 0.02)
        table = bytes(struct.pack(">f", dist.inv_cdf((i + 0.5) / 256))[0] for i in range(256))
        out = bytearray(2 * count)
        out[1::2] = rng2.randbytes(count).translate(table)
        out[0::2] = rng2.randbytes(count)
        return bytes(out)
    from array import array

    values = array("f", (rng2.gauss(0.0, 0.02) for _ in range(count)))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def datasets(chunks: int) -> dict[str, list[bytes]]:
    return {
        "bf16": [weights(CHUNK, 2, seed) for seed in range(chunks)],
        "fp32": [weights(CHUNK, 4, 100 + seed) for seed in range(chunks)],
        "random": [os.urandom(CHUNK) for _ in range(chunks)],
    }


# -- 1. codecs --------------------------------------------------------------------------


def _timed(fn: Callable[[], None], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_codecs(chunks: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for kind, data in datasets(chunks).items():
        total = sum(map(len, data))
        for codec in packing.CODECS:
            packed = [packing.pack(codec, d) for d in data]

            def pack_all(codec: int = codec, data: list[bytes] = data) -> None:
                for d in data:
                    packing.pack(codec, memoryview(d))

            out = bytearray(CHUNK)
            smaller = [p for p in packed if len(p) < CHUNK]

            def unpack_all(
                codec: int = codec, smaller: list[bytes] = smaller, out: bytearray = out
            ) -> None:
                for p in smaller:
                    packing.unpack(codec, p, out)

            pack_s = _timed(pack_all, repeat)
            unpack_s = _timed(unpack_all, repeat) if smaller else None
            ratio = sum(map(len, packed)) / total
            speed = total / pack_s
            rows.append(
                {
                    "data": kind,
                    "codec": packing.NAMES[codec],
                    "ratio": round(ratio, 4),
                    "pack_MBps": round(speed / 1e6, 1),
                    "unpack_MBps": (
                        round(len(smaller) * CHUNK / unpack_s / 1e6, 1) if unpack_s else None
                    ),
                    "pays_below_MBps": (
                        round(speed / MARGIN / 1e6, 1) if 1 / ratio >= MARGIN else None
                    ),
                }
            )
            log(f"{kind} {packing.NAMES[codec]}: ratio {ratio:.3f}, pack {speed / 1e6:.0f} MB/s")
    return rows


# -- 2. end to end ----------------------------------------------------------------------


class Rig:
    """A seeder home holding the published checkpoint and a puller home template."""

    def __init__(self, work: Path, ckpt: Path, prefix: Callable[[str], list[str]]) -> None:
        self.work, self.ckpt, self.prefix = work, ckpt, prefix
        self.template = work / "template"
        self.procs: list[subprocess.Popen[str]] = []

    def cli(self, home: Path, *args: object, node: str, timeout: float = 600.0) -> str:
        argv = [*self.prefix(node), *CLI, "--home", str(home), *map(str, args)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"p2pckpt {' '.join(map(str, args))}: {done.stderr.strip()[-800:]}")
        return done.stdout

    def prepare(self) -> None:
        if self.template.exists():
            shutil.rmtree(self.template)
        ids = {}
        for node in ("seeder", "puller"):
            home = self.template / node
            ids[node] = self.cli(home, "init", node=node).strip()
            (home / "config.toml").write_text("[discovery]\nmdns = false\n")
        self.cli(
            self.template / "seeder", "trust", "add", ids["puller"], "--role", "pull", node="seeder"
        )
        self.cli(
            self.template / "puller",
            "trust",
            "add",
            ids["seeder"],
            "--name",
            "s",
            "--role",
            "publish",
            node="puller",
        )
        self.cli(
            self.template / "seeder",
            "publish",
            self.ckpt,
            "--name",
            NAME,
            "--version",
            "1",
            node="seeder",
        )

    def serve(self, run: Path, listen: str, compress: str) -> tuple[str, Path]:
        home = run / "seeder"
        (home / "config.toml").write_text(
            f'[discovery]\nmdns = false\n[transfer]\ncompress = "{compress}"\n'
        )
        log_path = run / f"seeder-{compress}.log"
        out = open(log_path, "w+")  # noqa: SIM115 -- closed with the process
        argv = [*self.prefix("seeder"), *CLI, "--home", str(home), "-v", "serve"]
        argv += ["--listen", listen, "--no-mdns"]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"listening on ([0-9.]+:\d+)", log_path.read_text())
            if found:
                return found.group(1), log_path
            if proc.poll() is not None:
                raise BenchError(f"serve exited: {log_path.read_text()[-800:]}")
            time.sleep(0.05)
        raise BenchError("serve did not start listening within 30 s")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()

    def pull(self, run: Path, tag: str, addr: str) -> dict[str, Any]:
        home = run / f"puller-{tag}"
        shutil.copytree(self.template / "puller", home, symlinks=True)
        dest = run / f"copy-{tag}"
        t0 = time.monotonic()
        doc: dict[str, Any] = json.loads(
            self.cli(home, "pull", NAME, "--from", addr, "-o", dest, "--json", node="puller")
        )
        doc["wall"] = time.monotonic() - t0
        if doc["bytes_downloaded"] != doc["bytes_total"]:
            raise BenchError(f"{tag}: only {doc['bytes_downloaded']} bytes downloaded")
        if not same_file(dest, self.ckpt):
            raise BenchError(f"{tag}: the copy differs from the original")
        shutil.rmtree(home)
        dest.unlink()
        return doc


def same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def make_checkpoint(path: Path, size: int) -> None:
    """A safetensors file of bf16 tensors of TENSOR bytes (the last one shorter)."""
    sizes = [TENSOR] * (size // TENSOR) + ([size % TENSOR] if size % TENSOR else [])
    header, offset = {}, 0
    for i, n in enumerate(sizes):
        header[f"model.layers.{i}.weight"] = {
            "dtype": "BF16",
            "shape": [n // 2],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for i, n in enumerate(sizes):
            f.write(weights(n, 2, 1000 + i))


def packed_counts(log_text: str) -> tuple[int, int]:
    """(chunks, packed) summed over the seeder's "packed chunks" lines."""
    chunks = packed = 0
    for m in re.finditer(r"packed chunks .* chunks=(\d+) packed=(\d+)", log_text):
        chunks, packed = chunks + int(m.group(1)), packed + int(m.group(2))
    return chunks, packed


def e2e(rig: Rig, run: Path, listen: str, where: str, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for compress in ("auto", "off"):
        addr, log_path = rig.serve(run, listen, compress)
        docs = []
        for i in range(repeat):
            docs.append(rig.pull(run, f"{where}-{compress}-{i}", addr))
            log(
                f"{where} compress={compress} run {i + 1}/{repeat}: {docs[-1]['seconds']:.2f} s,"
                f" wire {docs[-1]['bytes_wire'] / docs[-1]['bytes_total']:.3f} of the chunk bytes"
            )
        rig.stop_all()
        _, packed = packed_counts(log_path.read_text())
        seconds = statistics.median(d["seconds"] for d in docs)
        total = docs[0]["bytes_total"]
        rows.append(
            {
                "link": where,
                "compress": compress,
                "seconds": round(seconds, 2),
                "MBps": round(total / seconds / 1e6, 1),
                "wire_ratio": round(statistics.median(d["bytes_wire"] for d in docs) / total, 4),
                "chunks_packed": packed,
                "chunks": docs[0]["chunks"] * repeat,
                "runs": [round(d["seconds"], 2) for d in docs],
            }
        )
    return rows


# -- report -------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]},"
        f" zstandard {result['zstandard']}; weights generated with {result['generator']}",
        f"codecs: {result['chunks']} x 4 MiB chunks per data kind, median of"
        f" {result['repeat']} passes after a warm-up; MB/s of chunk bytes, one thread",
        "",
        f"{'data':8}{'codec':14}{'ratio':>8}{'pack MB/s':>12}{'unpack MB/s':>13}{'pays below':>22}",
        "-" * 77,
    ]
    for r in result["codecs"]:
        pays = (
            f"{r['pays_below_MBps']:.0f} MB/s ({r['pays_below_MBps'] * 8:.0f} Mbit)"
            if r["pays_below_MBps"]
            else "never"
        )
        unpack = f"{r['unpack_MBps']:.0f}" if r["unpack_MBps"] else "-"
        lines.append(
            f"{r['data']:8}{r['codec']:14}{r['ratio']:>8.3f}{r['pack_MBps']:>12.0f}"
            f"{unpack:>13}{pays:>22}"
        )
    if result.get("e2e"):
        size = result["size"]
        lines += [
            "",
            f"end to end: pull of a {size / 2**20:.0f} MiB bf16 safetensors checkpoint"
            f" (median of {result['e2e_repeat']}; pull --json seconds)",
            "",
            f"{'link':20}{'compress':>9}{'seconds':>9}{'MB/s':>8}{'wire/chunk bytes':>18}"
            f"{'packed chunks':>15}",
            "-" * 79,
        ]
        for r in result["e2e"]:
            lines.append(
                f"{r['link']:20}{r['compress']:>9}{r['seconds']:>9.2f}{r['MBps']:>8.1f}"
                f"{r['wire_ratio']:>18.3f}{r['chunks_packed']:>8}/{r['chunks']:<6}"
            )
    return lines


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chunks", type=int, default=8, help="4 MiB chunks per data kind (8)")
    p.add_argument("--repeat", type=int, default=5, help="timed codec passes (5)")
    p.add_argument("--size", type=parse_size, default=256 << 20, help="checkpoint (256MiB)")
    p.add_argument("--rate", default="100mbit", help="shaped link rate, tc syntax (100mbit)")
    p.add_argument("--e2e-repeat", type=int, default=1, help="pulls per end-to-end cell (1)")
    p.add_argument("--skip-e2e", action="store_true", help="codecs only")
    p.add_argument("--skip-netns", action="store_true", help="no shaped link (loopback only)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    if args.chunks < 1 or args.repeat < 1 or args.e2e_repeat < 1:
        p.error("--chunks, --repeat and --e2e-repeat must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not packing.available():
        log("zstandard is not installed: nothing to measure")
        return 1
    import zstandard

    result: dict[str, Any] = {
        "zstandard": zstandard.__version__,
        "generator": generator(),
        "chunks": args.chunks,
        "repeat": args.repeat,
        "codecs": bench_codecs(args.chunks, args.repeat),
    }
    if not args.skip_e2e:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="p2pckpt-bench-compress-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            ckpt = work / "model.safetensors"
            make_checkpoint(ckpt, args.size)
            result.update(size=ckpt.stat().st_size, e2e_repeat=args.e2e_repeat, e2e=[])
            if not args.skip_netns:
                from bench.lan import shaped_lan

                with shaped_lan(["seeder", "puller"], args.rate) as lan:
                    rig = Rig(work, ckpt, lan.prefix)
                    try:
                        rig.prepare()
                        run = work / "netns"
                        shutil.copytree(rig.template / "seeder", run / "seeder")
                        listen = f"{lan.addr('seeder')}:0"
                        result["e2e"] += e2e(
                            rig, run, listen, f"{args.rate} (netns)", args.e2e_repeat
                        )
                    finally:
                        rig.stop_all()
            rig = Rig(work, ckpt, lambda node: [])
            try:
                rig.prepare()
                run = work / "loopback"
                shutil.copytree(rig.template / "seeder", run / "seeder")
                result["e2e"] += e2e(rig, run, "127.0.0.1:0", "loopback", args.e2e_repeat)
            finally:
                rig.stop_all()
        except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
            log(f"error: {exc}")
            return 1
        finally:
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    table = "\n".join(render(result))
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
