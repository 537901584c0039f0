#!/usr/bin/env python3
"""Demo of the main job: a seeder node and a puller node on 127.0.0.1.

Generates a sharded checkpoint directory (default 384 MiB), creates two node
homes that trust each other, publishes the checkpoint on the seeder, serves
it, pulls it into the second node over an encrypted channel with parallel
streams, and checks the result byte for byte. Everything lives in a temporary
directory that is removed at the end (``--keep`` to look at it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "p2pckpt"]


def sh(*args: str, capture: bool = True) -> str:
    print(
        "$ p2pckpt "
        + " ".join(args[:1] + tuple(a if len(a) < 40 else a[:12] + "…" for a in args[1:]))
    )
    out = subprocess.run(
        [*CLI, *args],
        check=True,
        text=True,
        timeout=600,
        stdout=subprocess.PIPE if capture else None,
    )
    return out.stdout or ""


def make_checkpoint(root: Path, total: int, shards: int) -> None:
    root.mkdir(parents=True)
    per = total // shards
    block = os.urandom(1 << 20)
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        with open(root / name, "wb") as f:
            for j in range(per >> 20):
                f.write(hashlib.blake2b(f"{i}/{j}".encode()).digest()[:16] + block[16:])
        weight_map[f"layers.{i}.weight"] = name
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "demo": True}))


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=384)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="p2pckpt-demo-"))
    server = None
    try:
        seeder, puller = work / "seeder-home", work / "puller-home"
        ckpt = work / "llama-ft-step1000"
        print(f"generating a {args.size_mib} MiB sharded checkpoint in {ckpt}")
        make_checkpoint(ckpt, args.size_mib << 20, args.shards)
        seeder_id = sh("--home", str(seeder), "init").strip()
        puller_id = sh("--home", str(puller), "init").strip()
        for home in (seeder, puller):  # 127.0.0.1 only: neither announces nor looks on the LAN
            (home / "config.toml").write_text("[discovery]\nmdns = false\n")
        sh("--home", str(seeder), "trust", "add", puller_id, "--name", "workstation")
        sh("--home", str(puller), "trust", "add", seeder_id, "--name", "nas", "--role", "publish")
        pub = json.loads(
            sh(
                "--home",
                str(seeder),
                "publish",
                str(ckpt),
                "--name",
                "llama-ft",
                "--version",
                "1000",
                "--meta",
                "base_model=llama",
                "--json",
            )
        )
        print(
            f"  published {pub['bytes'] / 1e6:.0f} MB in {pub['chunks']} chunks, hashed at "
            f"{pub['bytes'] / max(pub['seconds'], 1e-9) / 1e9:.2f} GB/s"
        )
        print("$ p2pckpt serve --listen 127.0.0.1:0 --no-mdns   (background; log: seeder.log)")
        server = subprocess.Popen(
            [*CLI, "--home", str(seeder), "serve", "--listen", "127.0.0.1:0", "--no-mdns"],
            stdout=subprocess.PIPE,
            stderr=open(work / "seeder.log", "w"),  # noqa: SIM115 - lives as long as the server
            text=True,
        )
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r":(\d+)$", line.strip())
        if not found:
            print("seeder did not start", file=sys.stderr)
            return 1
        addr = f"127.0.0.1:{found.group(1)}"
        dest = work / "pulled" / "llama-ft"
        extra = ["--streams", str(args.streams)] if args.streams else []
        started = time.monotonic()
        sh(
            "--home",
            str(puller),
            "pull",
            "llama-ft",
            "--from",
            addr,
            "-o",
            str(dest),
            *extra,
            capture=False,
        )
        elapsed = time.monotonic() - started
        same = tree_digest(ckpt) == tree_digest(dest)
        print(
            f"verified: pulled tree {'matches' if same else 'DIFFERS FROM'} the original "
            f"(sha256 over every file), {pub['bytes'] / elapsed / 1e6:.0f} MB/s end to end"
        )
        sh("--home", str(puller), "ls", "--local", capture=False)
        return 0 if same else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
            if server.stdout:
                server.stdout.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
