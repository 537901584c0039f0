"""Run the ``p2pckpt`` CLI with a fault in what it serves (benchmarks only).

    python scripts/bench/faulty.py corrupt --home H daemon ...   # flips a byte of every chunk
    python scripts/bench/faulty.py stall --home H daemon ...     # never sends a chunk

The node pulls like any other; only the chunks it serves are damaged (after
its own check, so the pullers' check must catch them) or never leave (the
reading thread sleeps), the way a bad disk or a wedged peer would behave.
``bench_swarm.py --faulty`` runs two of its pullers this way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

MODES = ("corrupt", "stall")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: faulty.py {{{','.join(MODES)}}} P2PCKPT-ARGS...")
    mode = sys.argv.pop(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from p2pckpt.transfer import chunk_serve

    real = chunk_serve.read_chunk

    def corrupt(path: Path, chunk: Any, req_id: int, buf: bytearray) -> memoryview:
        framed = real(path, chunk, req_id, buf)
        framed[-1] ^= 0xFF
        return framed

    def stall(path: Path, chunk: Any, req_id: int, buf: bytearray) -> memoryview:
        time.sleep(3600)  # a worker thread, never back: the request is never answered
        return real(path, chunk, req_id, buf)

    chunk_serve.read_chunk = corrupt if mode == "corrupt" else stall  # type: ignore[assignment]
    from p2pckpt.cli.main import main as cli

    cli()


if __name__ == "__main__":
    main()
