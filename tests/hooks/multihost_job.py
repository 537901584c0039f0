"""A torchrun job (CPU, gloo): each rank writes its own shards into its own
directory and home, then every rank calls the hook with ``multi_host=True``,
twice: step 7 honestly, then step 8 with rank LIE_RANK claiming a digest its
shard does not have (a host lying about its entries). One job for both, as
starting torch in 4 processes is most of the time this takes.

argv: BASE NAME LIE_RANK. Rank r uses BASE/home{r} and BASE/data{r}/step{N}
and writes its results to BASE/result{r}.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import p2pckpt.multihost.local
from p2pckpt.errors import P2pckptError
from p2pckpt.home import Home
from p2pckpt.hooks import CheckpointPublisher


def save_shards(data: Path, rank: int, step: int) -> None:
    """Rank ``rank``'s shard of a tiny model, as torch.distributed.checkpoint names it."""
    data.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rank * 1000 + step)
    torch.save({"w": torch.randn(64, 64)}, data / f"__{rank}_0.distcp")
    if rank == 0:
        (data / ".metadata").write_bytes(b"metadata of the whole checkpoint\n" * 10)


def lie() -> None:
    """From now on this rank's entries claim a wrong digest for its first file's last chunk."""
    honest = p2pckpt.multihost.local.local_entries

    def lying(home, path):  # type: ignore[no-untyped-def]
        root, entries = honest(home, path)
        first = entries[0]
        bad = replace(first.chunks[-1], digest=bytes(32))
        return root, (replace(first, chunks=(*first.chunks[:-1], bad)), *entries[1:])

    p2pckpt.multihost.local.local_entries = lying  # type: ignore[assignment]


def main() -> int:
    base, name, liar = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    home = base / f"home{rank}"
    Home.init(home)  # no CLI round trips: the test's time is short
    (home / "config.toml").write_text("[discovery]\nmdns = false\n")
    hook = CheckpointPublisher(name, home=home, multi_host=True)
    results: dict[str, object] = {"rank": rank}
    for step in (7, 8):
        data = base / f"data{rank}" / f"step{step}"
        save_shards(data, rank, step)
        if step == 8 and rank == liar:
            lie()
        try:
            result = hook.publish(data, step)
            results[str(step)] = {"ok": True, "root": result.root if result else None}
        except P2pckptError as exc:
            results[str(step)] = {"ok": False, "error": str(exc)}
    # one file per rank: ranks share one stdout, where lines interleave
    (base / f"result{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
