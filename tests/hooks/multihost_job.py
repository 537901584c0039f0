"""A torchrun job (CPU, gloo): each rank writes its own shards into its own
directory and home, then every rank calls the hook with ``multi_host=True``.

argv: BASE NAME STEP [LIE_RANK]. Rank r uses BASE/home{r} and BASE/data{r};
the rank named LIE_RANK claims a digest for its shard that its file does not
have (a host lying about its entries). Prints one JSON line per rank.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import p2pckpt.multihost
from p2pckpt.errors import P2pckptError
from p2pckpt.hooks import CheckpointPublisher


def main() -> int:
    base, name, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    lie = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = base / f"data{rank}"
    data.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rank)
    # each rank's shard of a tiny model, as torch.distributed.checkpoint names them
    torch.save({"w": torch.randn(64, 64)}, data / f"__{rank}_0.distcp")
    if rank == 0:
        (data / ".metadata").write_bytes(b"metadata of the whole checkpoint\n" * 10)
    if rank == lie:
        honest = p2pckpt.multihost.local_entries

        def lying(home, path):  # type: ignore[no-untyped-def]
            root, entries = honest(home, path)
            first = entries[0]
            bad = replace(first.chunks[-1], digest=bytes(32))
            return root, (replace(first, chunks=(*first.chunks[:-1], bad)), *entries[1:])

        p2pckpt.multihost.local_entries = lying
    hook = CheckpointPublisher(name, home=base / f"home{rank}", multi_host=True)
    try:
        result = hook.publish(data, step)
        out = {"rank": rank, "ok": True, "root": result.root if result else None}
    except P2pckptError as exc:
        out = {"rank": rank, "ok": False, "error": str(exc)}
    print(json.dumps(out), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
