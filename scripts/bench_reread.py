#!/usr/bin/env python3
"""What the read-back before commit costs (issue 13; docs/protocol.md §5).

What is measured
----------------
One file of ``--size`` random bytes (default 2 GiB) in 4 MiB chunks, staged
with the real ``Staging`` in ``--dir`` (default: a temporary directory under
the current one, so on the disk a pull would write to):

* ``write``: every chunk through ``write_chunk`` (hash, the ctime tripwire's
  two ``fstat`` calls, ``pwrite``, journal), and those ``fstat`` calls alone
  (as many as the writes made) for the tripwire's share;
* ``commit fresh``: ``commit`` of a fresh pull nothing else touched (the
  tripwire says nothing changed: no read-back, fsync + rename only);
* ``commit resumed``: the same copy staged, closed, and resumed (``open``
  re-hashes what the journal claims), then ``commit``, which reads every
  chunk back; ``warm``: straight after, from the page cache; ``cold``: after
  ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only) between the
  resume and the commit, the worst case (a copy larger than the page cache);
* ``open resumed``: the resume's own re-hash, for comparison.

Dirty pages are flushed (``sync``) before each timed commit, so the commit
times hold the read-back, not the write-back of the pull. Every number is
the median of ``--repeat`` runs (min and max beside it). Wall seconds and
process CPU seconds; GB/s are 1e9 bytes per second.

Usage::

    sudo .venv/bin/python scripts/bench_reread.py               # 2 GiB
    .venv/bin/python scripts/bench_reread.py --size 1GiB --repeat 3 --threads 1,2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from p2pckpt.identity.keys import NodeKey
from p2pckpt.manifest.chunker import CHUNK_SIZE, Chunk, chunk_hash
from p2pckpt.manifest.manifest import FileEntry, Manifest, sign
from p2pckpt.store import partial_files
from p2pckpt.store.staging import Staging

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(text: str) -> int:
    for unit, scale in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="REREAD_THREADS values to try")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-reread-", dir=args.dir or Path.cwd()))
    try:
        pieces_at = [(off, min(CHUNK_SIZE, size - off)) for off in range(0, size, CHUNK_SIZE)]
        block = os.urandom(CHUNK_SIZE)
        # distinct chunks without holding the file in memory: the block rotated
        pieces = [block[i % 97 :] + block[: i % 97] for i in range(97)]

        def piece(i: int) -> bytes:
            return pieces[i % 97][: pieces_at[i][1]]

        chunks = tuple(Chunk(off, n, chunk_hash(piece(i))) for i, (off, n) in enumerate(pieces_at))
        key = NodeKey.generate()
        manifest, env = sign(
            Manifest(
                "bench", 1, key.peer_id, int(time.time()), {}, "file",
                (FileEntry("m.bin", size, chunks),),
            ),
            key,
        )  # fmt: skip
        cold_ok = os.geteuid() == 0
        rows: dict[str, list[tuple[float, float]]] = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            partial_files.REREAD_THREADS = threads  # type: ignore[misc]
            for run in range(args.repeat):
                dest = work / f"m-{threads}-{run}.bin"
                st = Staging(dest, manifest, env)
                st.open()

                def write_all(st: Staging = st) -> None:
                    for i in range(len(chunks)):
                        st.write_chunk(i, piece(i))

                rows.setdefault("write (hash + tripwire + pwrite)", []).append(timed(write_all))
                fd = os.open(st.path / "data" / "m.bin", os.O_RDONLY)

                def tripwire(fd: int = fd) -> None:
                    for _ in range(2 * len(chunks)):
                        os.fstat(fd)

                try:
                    rows.setdefault("  tripwire fstat calls alone", []).append(timed(tripwire))
                finally:
                    os.close(fd)
                st.sync()
                os.sync()
                rows.setdefault("commit fresh (no read-back)", []).append(timed(st.commit))
                assert st.reread == 0
                dest.unlink()
                for temp in ("warm", "cold"):
                    if temp == "cold" and not cold_ok:
                        continue
                    st = Staging(dest, manifest, env)
                    st.open()
                    write_all(st)
                    st.close()
                    if temp == "cold":
                        drop_caches()
                    again = Staging(dest, manifest, env)
                    rows.setdefault(f"open resumed {temp}", []).append(timed(again.open))
                    os.sync()
                    if temp == "cold":
                        drop_caches()
                    label = f"commit resumed {temp}, {threads} thread(s)"
                    rows.setdefault(label, []).append(timed(again.commit))
                    assert again.reread == size
                    dest.unlink()
        print(f"{size / (1 << 30):.2f} GiB, {len(chunks)} chunks, median of {args.repeat}")
        print(f"{'':44} {'wall s':>8} {'min-max':>13} {'cpu s':>7} {'GB/s':>6}")
        for label, samples in rows.items():
            walls = [w for w, _ in samples]
            med = statistics.median(walls)
            cpu = statistics.median(c for _, c in samples)
            print(
                f"{label:44} {med:8.3f} {min(walls):6.2f}-{max(walls):<6.2f} {cpu:7.2f}"
                f" {size / med / 1e9:6.2f}"
            )
        if not cold_ok:
            print("(cold rows skipped: dropping the page cache needs root)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
