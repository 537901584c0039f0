"""A trainer writing a sharded safetensors checkpoint at a steady rate (issue 21).

``python -m tests.e2e.shard_writer DIR --shards 4 --shard-bytes N [--rate B/s]
[--first I] [--last J] [--index] [--stall-at BYTES]`` writes shards I..J
(1-based) of ``model-0000i-of-0000n.safetensors`` in place, each a valid
safetensors file (one U8 tensor) of deterministic bytes, then with
``--index`` the ``model.safetensors.index.json`` naming all of them (written
last, as ``save_pretrained`` does). ``--stall-at`` stops writing after that
many bytes of the run and waits forever (a trainer that hangs or is killed).
Prints ``wrote NAME`` after each file is closed, flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import time
from pathlib import Path

PIECE = 1 << 20


def shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def header(size: int) -> bytes:
    """The safetensors header of a file holding one U8 tensor of ``size`` bytes."""
    doc = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = doc.encode() + b" " * (-len(doc) % 8)
    return struct.pack("<Q", len(raw)) + raw


def shard_pieces(i: int, size: int, seed: int) -> list[bytes]:
    """The shard's bytes in PIECE-sized pieces (randbytes caps out near 256 MiB)."""
    rng = random.Random(seed * 1000 + i)
    return [rng.randbytes(min(PIECE, size - pos)) for pos in range(0, size, PIECE)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-bytes", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="bytes/s (0: no pacing)")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=0)
    ap.add_argument("--index", action="store_true")
    ap.add_argument("--stall-at", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n, last = args.shards, args.last or args.shards
    args.dir.mkdir(parents=True, exist_ok=True)
    start, written = time.monotonic(), 0
    for i in range(args.first, last + 1):
        pieces = shard_pieces(i, args.shard_bytes, args.seed)
        name = shard_name(i, n)
        with open(args.dir / name, "wb") as f:
            f.write(header(args.shard_bytes))
            for piece in pieces:
                if 0 <= args.stall_at <= written:
                    f.flush()
                    print("stalled", flush=True)
                    while True:
                        time.sleep(3600)
                f.write(piece)
                written += len(piece)
                if args.rate > 0:  # pace: never ahead of rate
                    ahead = written / args.rate - (time.monotonic() - start)
                    if ahead > 0:
                        f.flush()
                        time.sleep(ahead)
            f.flush()
            os.fsync(f.fileno())
        print(f"wrote {name}", flush=True)
    if args.index:
        weight_map = {f"w{i}": shard_name(i, n) for i in range(1, n + 1)}
        doc = {"metadata": {"total_size": n * args.shard_bytes}, "weight_map": weight_map}
        (args.dir / "model.safetensors.index.json").write_text(json.dumps(doc))
        print("wrote index", flush=True)


if __name__ == "__main__":
    main()
