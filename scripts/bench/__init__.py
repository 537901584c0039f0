"""The parts of ``scripts/bench_transfer.py``; its docstring says what is measured and how."""

from __future__ import annotations

import sys


class BenchError(Exception):
    """A measurement or set-up step failed; the message is shown to the user."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
