#!/usr/bin/env python3
"""Incremental benchmark: pull a new version when an older one is already here, vs rsync.

What is measured, in one run and on the same bytes
---------------------------------------------------
Three kinds of version 1, each published by the seeder under its own name: the sharded
safetensors checkpoint of ``scripts/bench_transfer.py`` (``--size`` bytes, default 2 GiB,
64 MiB tensors in 512 MiB shards), the same as one file, and 256 MiB single files: a
``model.bin`` of random bytes, a ``model.pt`` (``torch.save``: a zip) and a
``model.gguf`` of 16 tensors each. New versions derived from them (issue 18's cases):

* (a) 10% of the tensors rewritten in place (same sizes, new bytes);
* (b) the same, and every shard's JSON header grown by 37 bytes, so every offset shifts;
* (c) one shard replaced by new bytes and one new shard (a quarter of a shard) added;
* (d) 10% of the 4 MiB regions counted from each shard's start rewritten (each straddles
  two tensor-aligned chunks), and (e) the same in the single-file checkpoint;
* (f) ``model.bin``: 8 regions of 2 MiB rewritten at unaligned offsets, and 16 insertions
  of 1-100 bytes (every later byte shifts);
* (g) ``model.pt`` and (h) ``model.gguf``: one tensor grown by 1 MiB + 5 bytes, so every
  later tensor moves.

For each case, from scratch: a fresh puller home pulls version 1 into DEST (untimed), then
``p2pckpt pull NAME@N -o DEST`` updates DEST in place (timed). rsync gets a fresh copy of
version 1 and runs ``rsync -a`` over a local sshd (ours, on 127.0.0.1) from the new
version's directory into it (timed). Both copies are checked file by file (sizes, and
p2pckpt's own per-chunk verification).

* Bytes on the wire: the loopback interface's received bytes during the timed command
  (both directions of every connection, with TCP/IP headers; nothing else should use
  loopback meanwhile).
* Changed bytes: what differs in content: the rewritten tensors and regions, the grown
  headers, the replaced and added shard, the inserted bytes, a resized tensor and every
  byte of its file that is not tensor data. The manifest is the signed envelope's size.
* Page cache warm for both tools; one run per case (``--repeat`` for medians). p2pckpt
  fsyncs what it commits; rsync (by default) does not.

Targets (issue 18): p2pckpt's bytes on the wire <= 1.05 x (changed bytes + manifest) in
the region cases (d, e), <= 1.10 x in the others, and its time <= rsync's. A MISS does
not change the exit status; 1 means a measurement failed. Processes and temporary files
are cleaned up on exit.

Usage::

    python scripts/bench_incremental.py                 # 2 GiB
    python scripts/bench_incremental.py --size 512MiB --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from bench import BenchError, checkpoint, log
from bench.sshd import SshServer, ensure_ssh_tools
from bench.units import GIB, MB
from bench_transfer import parse_size

NAME = "inc-bench"
CLI = [sys.executable, "-m", "p2pckpt"]
GENERIC_BYTES = 256 << 20
REGION = 4 << 20
# case: (what changes, the version 1 it changes, wire target: x (changed + manifest))
CASES = {
    "a": ("10% of tensors changed in place", "sharded", 1.10),
    "b": ("(a) + every header grown by 37 bytes", "sharded", 1.10),
    "c": ("one shard replaced, one added", "sharded", 1.10),
    "d": ("10% of 4 MiB regions rewritten, 4 shards", "sharded", 1.05),
    "e": ("10% of 4 MiB regions rewritten, 1 file", "single", 1.05),
    "f": ("model.bin: 8 x 2 MiB rewritten, 16 inserts", "generic", 1.10),
    "g": ("model.pt (zip): one tensor resized", "pt", 1.10),
    "h": ("model.gguf: one tensor resized", "gguf", 1.10),
}
FORMAT_TENSORS = 16  # tensors in the .pt and .gguf checkpoints, GENERIC_BYTES in all


def lo_bytes() -> int:
    return int(Path("/sys/class/net/lo/statistics/rx_bytes").read_text())


def cli(home: Path, *args: object, timeout: float = 600) -> str:
    done = subprocess.run(
        [*CLI, "--home", str(home), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise BenchError(f"p2pckpt {' '.join(map(str, args))}: {done.stderr.strip()[-800:]}")
    return done.stdout


def shards(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))


def header_of(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def rewrite_tensors(root: Path, share: float, seed: int) -> int:
    """Overwrite ``share`` of all tensors with new bytes, in place; returns bytes changed."""
    tensors = []
    for shard in shards(root):
        n, header = header_of(shard)
        for key, entry in header.items():
            if key != "__metadata__":
                lo, hi = entry["data_offsets"]
                tensors.append((shard, 8 + n + lo, hi - lo))
    rng = random.Random(seed)
    chosen = rng.sample(tensors, max(1, round(share * len(tensors))))
    for shard, offset, length in chosen:
        with open(shard, "r+b") as f:
            f.seek(offset)
            f.write(rng.randbytes(length))
    return sum(length for _, _, length in chosen)


def grow_headers(root: Path, by: int) -> int:
    """Rewrite every shard with a JSON header ``by`` bytes longer; returns header bytes."""
    total = 0
    for shard in shards(root):
        n, header = header_of(shard)
        header.setdefault("__metadata__", {})["note"] = ""
        base = len(json.dumps(header, separators=(",", ":")).encode())
        header["__metadata__"]["note"] = "x" * (n + by - base)
        blob = json.dumps(header, separators=(",", ":")).encode()
        assert len(blob) == n + by, (len(blob), n + by)
        tmp = shard.with_suffix(".tmp")
        with open(shard, "rb") as src, open(tmp, "wb") as dst:
            src.seek(8 + n)
            dst.write(len(blob).to_bytes(8, "little") + blob)
            shutil.copyfileobj(src, dst, 16 << 20)
        os.replace(tmp, shard)
        total += 8 + len(blob)
    return total


def rewrite_regions(root: Path, share: float, seed: int) -> int:
    """Rewrite ``share`` of the 4 MiB regions counted from each file's start
    (wherever tensors and chunks fall); returns bytes changed."""
    rng = random.Random(seed)
    regions = [(f, at) for f in sorted(root.iterdir()) for at in range(0, f.stat().st_size, REGION)]
    changed = 0
    for f, at in rng.sample(regions, max(1, round(share * len(regions)))):
        n = min(REGION, f.stat().st_size - at)
        with open(f, "r+b") as out:
            out.seek(at)
            out.write(os.urandom(n))
        changed += n
    return changed


def edit_generic(root: Path, seed: int) -> int:
    """``model.bin``: 8 regions of 2 MiB rewritten at unaligned offsets and 16
    insertions of 1-100 bytes (every later byte shifts); returns bytes new."""
    rng = random.Random(seed)
    f = root / "model.bin"
    data = bytearray(f.read_bytes())
    changed = 0
    for _ in range(8):
        at = rng.randrange(0, len(data) - (2 << 20))
        data[at : at + (2 << 20)] = os.urandom(2 << 20)
        changed += 2 << 20
    for _ in range(16):
        n = rng.randrange(1, 101)
        at = rng.randrange(0, len(data))
        data[at:at] = rng.randbytes(n)
        changed += n
    f.write_bytes(data)
    return changed


def generic_checkpoint(workdir: Path) -> Path:
    """A 256 MiB ``model.bin`` of random bytes (not safetensors), reused."""
    root = workdir / "ckpt-generic"
    f = root / "model.bin"
    if not (f.exists() and f.stat().st_size == GENERIC_BYTES):
        root.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(GENERIC_BYTES))
    return root


def _tensors(seed: int) -> list[bytes]:
    rng = random.Random(seed)  # the same tensors for the same seed
    return [rng.randbytes(GENERIC_BYTES // FORMAT_TENSORS) for _ in range(FORMAT_TENSORS)]


def write_pt(path: Path, blobs: list[bytes]) -> None:
    """A PyTorch checkpoint (``torch.save``: a zip of stored entries) of uint8 tensors."""
    import torch

    state = {
        f"layer.{i}.weight": torch.frombuffer(bytearray(b), dtype=torch.uint8)
        for i, b in enumerate(blobs)
    }
    torch.save(state, path)


def write_gguf(path: Path, blobs: list[bytes]) -> None:
    """A GGUF v3 file: header, two metadata strings, tensor infos, then each
    tensor's data at its 32-byte aligned offset (type 24: I8)."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    head = b"GGUF" + struct.pack("<IQQ", 3, len(blobs), 2)
    for key, value in (("general.architecture", "bench"), ("general.name", "bench")):
        head += string(key) + struct.pack("<I", 8) + string(value)  # 8: a string value
    offset = 0
    for i, blob in enumerate(blobs):
        head += string(f"blk.{i}.weight") + struct.pack("<IQIQ", 1, len(blob), 24, offset)
        offset += -(-len(blob) // 32) * 32
    with open(path, "wb") as out:
        out.write(head + bytes(-len(head) % 32))
        for blob in blobs:
            out.write(blob + bytes(-len(blob) % 32))


def format_checkpoint(workdir: Path, kind: str) -> Path:
    """``model.pt`` or ``model.gguf`` of FORMAT_TENSORS random tensors, reused."""
    root = workdir / f"ckpt-{kind}"
    f = root / f"model.{kind}"
    if not f.exists():
        root.mkdir(parents=True, exist_ok=True)
        (write_pt if kind == "pt" else write_gguf)(f, _tensors(seed=9))
    return root


def resize_tensor(root: Path, kind: str, seed: int) -> int:
    """Tensor 7 of 16 grown by 1 MiB + 5 bytes (new bytes): every later
    tensor moves. Returns the bytes new: that tensor, and every byte of the
    file that is not tensor data (header, pickle, zip directory)."""
    f = root / f"model.{kind}"
    blobs = _tensors(seed=9)
    blobs[7] = os.urandom(len(blobs[7]) + (1 << 20) + 5)
    (write_pt if kind == "pt" else write_gguf)(f, blobs)
    return len(blobs[7]) + f.stat().st_size - sum(len(b) for b in blobs)


def replace_and_add_shard(root: Path, seed: int) -> int:
    """New bytes for the second shard (same layout), plus one new quarter-size shard."""
    rng = random.Random(seed)
    shard = shards(root)[1]
    n, _ = header_of(shard)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(8 + n)
        left = size - 8 - n
        while left:
            step = min(left, 64 << 20)
            f.write(rng.randbytes(step))
            left -= step
    extra = root / "model-extra.safetensors"
    data = rng.randbytes((size - 8 - n) // 4)
    blob = json.dumps(
        {"extra": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    ).encode()
    extra.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return (size - 8 - n) + extra.stat().st_size


def timed(argv: list[str], timeout: float) -> tuple[float, int]:
    """Run ``argv``; (seconds, loopback bytes) while it ran."""
    before, t0 = lo_bytes(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    seconds, wire = time.perf_counter() - t0, lo_bytes() - before
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return seconds, wire


def same_files(a: Path, b: Path) -> None:
    if checkpoint.checkpoint_files(a) != checkpoint.checkpoint_files(b):
        raise BenchError(f"{b} does not hold the same files as {a}")


def run_case(
    case: str,
    name: str,
    work: Path,
    v1: Path,
    seeder: Path,
    seeder_id: str,
    addr: str,
    ssh: SshServer,
    make: Callable[[Path], int],
    version: int,
    timeout: float,
) -> dict[str, Any]:
    src = work / f"v{version}-{case}"
    if src.exists():
        shutil.rmtree(src)
    subprocess.run(["cp", "-a", "--reflink=auto", str(v1), str(src)], check=True, timeout=timeout)
    changed = make(src)
    cli(seeder, "publish", src, "--name", name, "--version", version)
    from p2pckpt.home import Home

    entry = Home.open(seeder).catalog.find(name, version)
    assert entry is not None
    manifest_bytes = len(entry.envelope)
    # p2pckpt: a fresh puller holding version 1 at DEST, then the update.
    puller = work / f"puller-{case}"
    if puller.exists():
        shutil.rmtree(puller)
    pid = cli(puller, "init").strip()
    (puller / "config.toml").write_text("[discovery]\nmdns = false\n")
    cli(puller, "trust", "add", seeder_id, "--name", "seeder", "--role", "publish")
    cli(seeder, "trust", "add", pid, "--role", "pull")
    dest = work / f"dest-{case}"
    cli(puller, "pull", f"{name}@1", "--from", addr, "-o", dest)
    os.sync()
    argv = [*CLI, "--home", str(puller), "pull", f"{name}@{version}", "--from", addr]
    p_s, p_wire = timed([*argv, "-o", str(dest), "--json"], timeout)
    same_files(src, dest)
    # rsync: a fresh copy of version 1, then rsync over ssh.
    rdest = work / f"rsync-{case}"
    if rdest.exists():
        shutil.rmtree(rdest)
    subprocess.run(["cp", "-a", str(v1), str(rdest)], check=True, timeout=timeout)
    os.sync()
    rsh = " ".join(ssh.ssh_argv())
    rargv = [ssh.tools["rsync"], "-a", "-e", rsh, f"{ssh.target}:{src}/", f"{rdest}/"]
    r_s, r_wire = timed(rargv, timeout)
    same_files(src, rdest)
    for path in (dest, rdest, src, puller):
        shutil.rmtree(path)
    os.sync()
    return {
        "changed_bytes": changed,
        "manifest_bytes": manifest_bytes,
        "p2pckpt_s": p_s,
        "p2pckpt_wire": p_wire,
        "rsync_s": r_s,
        "rsync_wire": r_wire,
    }


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description="Benchmark pulling a new version vs rsync.")
    p.add_argument("--size", type=parse_size, default=2 * GIB, help="checkpoint size (2GiB)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case (medians shown)")
    p.add_argument("--workdir", type=Path, help="where checkpoints and copies go")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--cases", default="".join(CASES), help=f"which cases ({''.join(CASES)})")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p2pckpt-inc-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    tools = ensure_ssh_tools()
    ssh = SshServer(tools, workdir / "sshd", os.environ.get("USER", "root"))
    serve: subprocess.Popen[str] | None = None
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES if c in args.cases}
    timeout = 600 + args.size / (5 * MB)
    try:
        bases = {"sharded": checkpoint.prepare_checkpoint(workdir, args.size)}
        wanted = {CASES[c][1] for c in results}
        if "single" in wanted:
            bases["single"] = checkpoint.prepare_checkpoint(workdir, args.size, "single")
        if "generic" in wanted:
            bases["generic"] = generic_checkpoint(workdir)
        for kind in ("pt", "gguf"):
            if kind in wanted:
                bases[kind] = format_checkpoint(workdir, kind)
        v1 = bases["sharded"]
        if (workdir / "sshd").exists():
            shutil.rmtree(workdir / "sshd")
        ssh.start()
        seeder = workdir / "seeder"
        if seeder.exists():
            shutil.rmtree(seeder)
        seeder_id = cli(seeder, "init").strip()
        (seeder / "config.toml").write_text("[discovery]\nmdns = false\n")
        for f in v1.iterdir():  # warm the page cache, untimed
            with open(f, "rb") as fh:
                while fh.read(16 << 20):
                    pass
        t0 = time.perf_counter()
        cli(seeder, "publish", v1, "--name", NAME, "--version", "1")
        publish_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cli(seeder, "publish", v1, "--name", NAME, "--version", "100")  # nothing changed
        republish_s = time.perf_counter() - t0
        for base, root in bases.items():
            if base != "sharded":
                cli(seeder, "publish", root, "--name", f"{NAME}-{base}", "--version", "1")
        log(
            f"publish: {publish_s:.2f} s ({args.size / publish_s / 1e9:.2f} GB/s);"
            f" republish unchanged: {republish_s:.2f} s"
        )
        log_file = open(workdir / "serve.log", "w+")  # noqa: SIM115 -- closed at exit
        serve = subprocess.Popen(
            [*CLI, "--home", str(seeder), "serve", "--listen", "127.0.0.1:0", "--no-mdns"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while "listening on" not in (text := (workdir / "serve.log").read_text()):
            if time.monotonic() > deadline or serve.poll() is not None:
                raise BenchError(f"serve did not start: {text[-500:]}")
            time.sleep(0.05)
        addr = text.split("listening on", 1)[1].split()[0]
        makers: dict[str, Callable[[Path], int]] = {
            "a": lambda d: rewrite_tensors(d, 0.10, seed=1),
            "b": lambda d: rewrite_tensors(d, 0.10, seed=1) + grow_headers(d, 37),
            "c": lambda d: replace_and_add_shard(d, seed=2),
            "d": lambda d: rewrite_regions(d, 0.10, seed=3),
            "e": lambda d: rewrite_regions(d, 0.10, seed=4),
            "f": lambda d: edit_generic(d, seed=5),
            "g": lambda d: resize_tensor(d, "pt", seed=6),
            "h": lambda d: resize_tensor(d, "gguf", seed=7),
        }
        versions = {base: 1 for base in bases}
        for round_ in range(args.repeat):
            for case in results:
                what, base, _ = CASES[case]
                versions[base] += 1
                name = NAME if base == "sharded" else f"{NAME}-{base}"
                log(f"round {round_ + 1}, case ({case}): {what}")
                r = run_case(
                    case,
                    name,
                    workdir,
                    bases[base],
                    seeder,
                    seeder_id,
                    addr,
                    ssh,
                    makers[case],
                    versions[base],
                    timeout,
                )
                log(
                    f"  p2pckpt {r['p2pckpt_s']:.1f} s, {r['p2pckpt_wire'] / MB:.1f} MB wire;"
                    f" rsync {r['rsync_s']:.1f} s, {r['rsync_wire'] / MB:.1f} MB"
                    f" (changed {r['changed_bytes'] / MB:.1f} MB)"
                )
                results[case].append(r)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=15)
        ssh.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = {
        "publish_gbps": args.size / publish_s / 1e9,
        "republish_s": republish_s,
    }
    lines = [
        f"incremental benchmark: {args.size / GIB:.2f} GiB checkpoint, {args.repeat} run(s)",
        f"  publish (hash every byte; whole command, page cache warm):"
        f" {args.size / publish_s / 1e9:.2f} GB/s; republish, nothing changed: {republish_s:.2f} s",
    ]
    met = True
    for case, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        budget = med["changed_bytes"] + med["manifest_bytes"]
        wire_x = med["p2pckpt_wire"] / budget
        what, _, target = CASES[case]
        ok = wire_x <= target and med["p2pckpt_s"] <= med["rsync_s"]
        met &= ok
        summary[case] = {**med, "wire_ratio": wire_x}
        lines.append(
            f"  ({case}) {what:<42} changed {med['changed_bytes'] / MB:8.1f} MB"
            f" + manifest {med['manifest_bytes'] / 1e3:.0f} KB\n"
            f"      p2pckpt {med['p2pckpt_wire'] / MB:8.1f} MB on the wire ({wire_x:.3f}x),"
            f" {med['p2pckpt_s']:6.2f} s   rsync {med['rsync_wire'] / MB:8.1f} MB,"
            f" {med['rsync_s']:6.2f} s   target {target}x {'MET' if ok else 'MISS'}"
        )
    lines.append(
        f"targets: wire <= each case's target x (changed + manifest) and time <= rsync's:"
        f" {'MET' if met else 'MISS'}"
    )
    for line in lines:
        print(line, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"size": args.size, "cases": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
