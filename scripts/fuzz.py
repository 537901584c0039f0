#!/usr/bin/env python3
"""Coverage-guided fuzzing of every parser that sees peer bytes (issue 13), with atheris.

Usage::

    python scripts/fuzz.py                         # every harness, 10^6 inputs each
    python scripts/fuzz.py --runs 200000 --only frames,relay --jobs 2

Each harness of ``tests/fuzz/registry.py`` runs in a process of its own
(atheris' ``Fuzz()`` never returns), with p2pckpt, the harnesses, tomllib and
ipaddress instrumented (``atheris.instrument_imports``), libFuzzer's
``-runs`` and a fixed ``-seed``. Its corpus starts from the harness's seeds
(real encoded values) in ``OUT/NAME/corpus`` and grows there; findings
(``crash-*``, ``timeout-*``, ``oom-*``: the input that did it) are saved in
``OUT/NAME/``, its libFuzzer log in ``OUT/NAME/log.txt``. Each run of a
harness starts afresh: copy findings elsewhere to keep them.

A finding is whatever the harness raises: an exception its parser's contract
does not allow, a broken round trip or bound (see each harness's docstring),
an input slower than ``--timeout`` seconds, or a process above
``--rss-limit-mb``. libFuzzer stops a harness at its first finding; fix it
(or reproduce it with ``python scripts/fuzz.py --only NAME --repro FILE``)
and run again.

Prints, per harness: inputs run, wall seconds, coverage (libFuzzer's ``cov``
edges and ``ft`` features), corpus size, and findings; writes the same as
JSON to ``OUT/summary.json``. Exits 1 if anything was found.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz import registry  # noqa: E402  (imports nothing of p2pckpt yet)

DEFAULT_OUT = Path(tempfile.gettempdir()) / "p2pckpt-fuzz"
INSTRUMENT = ("p2pckpt", "tests", "tomllib", "ipaddress")
FINDINGS = ("crash-", "timeout-", "oom-", "leak-")


def _child(args: argparse.Namespace) -> None:
    """Run one harness under atheris; never returns (libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENT)):
        harness = registry.load(args.child)
    if args.repro:
        harness.one_input(Path(args.repro).read_bytes())
        print(f"{args.repro}: no finding")
        return
    out = Path(args.out) / harness.name
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    for i, seed in enumerate(harness.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    max_len = args.max_len or harness.max_len
    argv = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-seed={args.seed}",
        f"-max_len={max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, harness.one_input)
    atheris.Fuzz()


def _last(pattern: str, text: str) -> re.Match[str] | None:
    matches = list(re.finditer(pattern, text))
    return matches[-1] if matches else None


def _summarize(name: str, out: Path, seconds: float, status: int) -> dict[str, Any]:
    """What one harness's log and artifact directory say."""
    log = (out / "log.txt").read_text(errors="replace")
    done = _last(r"Done (\d+) runs in (\d+) second", log)
    executed = _last(r"stat::number_of_executed_units: (\d+)", log)
    progress = _last(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", log)
    runs = int(done[1]) if done else int(executed[1]) if executed else None
    if runs is None and progress:
        runs = int(progress[1])
    error = _last(r"(?m)^(\w*(?:Error|Exception)\b.*)$", log)
    return {
        "harness": name,
        "inputs": runs,
        "seconds": round(seconds, 1),
        "cov": int(progress[2]) if progress else None,
        "ft": int(progress[3]) if progress else None,
        "corpus": int(progress[4]) if progress else None,
        "exit": status,
        "findings": sorted(str(p) for p in out.iterdir() if p.name.startswith(FINDINGS)),
        "error": error[1][:300] if error and status else None,
        "log": str(out / "log.txt"),
    }


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    argv += ["--runs", str(args.runs), "--seed", str(args.seed), "--out", str(args.out)]
    argv += ["--timeout", str(args.timeout), "--rss-limit-mb", str(args.rss_limit_mb)]
    argv += ["--max-len", str(args.max_len)]
    start = time.monotonic()
    with (out / "log.txt").open("wb") as log:
        status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
    result = _summarize(name, out, time.monotonic() - start, status.returncode)
    print(_row(result), flush=True)
    return result


_HEADER = f"{'harness':<10} {'inputs':>9} {'seconds':>8} {'cov':>5} {'ft':>6} {'corpus':>6}  found"


def _row(r: dict[str, Any]) -> str:
    found = ", ".join(r["findings"]) or ("none" if r["exit"] == 0 else f"exit {r['exit']}")
    if r["error"]:
        found += f"  ({r['error']})"
    cells = [r["inputs"], r["seconds"], r["cov"], r["ft"], r["corpus"]]
    inputs, seconds, cov, ft, corpus = ("?" if c is None else c for c in cells)
    return f"{r['harness']:<10} {inputs:>9} {seconds:>8} {cov:>5} {ft:>6} {corpus:>6}  {found}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per harness")
    parser.add_argument("--only", help="comma-separated harness names (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at once")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="corpora, logs and findings")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's -seed")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=0, help="0: the harness's own")
    parser.add_argument("--repro", help="run one saved input through --only NAME, instrumented")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0
    names = args.only.split(",") if args.only else list(registry.MODULES)
    unknown = [n for n in names if n not in registry.MODULES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; have {', '.join(registry.MODULES)}")
    if args.repro:
        if len(names) != 1:
            parser.error("--repro needs exactly one --only NAME")
        args.child = names[0]
        _child(args)
        return 0
    print(f"{args.runs} inputs per harness, seed {args.seed}, output in {args.out}")
    print(_HEADER, flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda n: _run(n, args), names))
    Path(args.out, "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    bad = [r for r in results if r["findings"] or r["exit"]]
    print(f"{len(bad)} of {len(results)} harnesses with findings; summary: {args.out}/summary.json")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
