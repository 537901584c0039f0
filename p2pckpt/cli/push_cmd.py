"""``p2pckpt push``: have other daemons pull a version from us, and wait.

The command serves the version itself for as long as it runs (a temporary
seeder on ``--listen``) and asks each target to pull it back; see
``p2pckpt.transfer.push_client``. It prints each target's verified result.
While targets pull, each one's progress is shown: a bar per target on a
terminal, else a line per target at most every PROGRESS_LINE_EVERY seconds.
Exit 0 only if every target verified (else ``PushIncomplete``, 12).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import (
    command,
    config_option,
    emit_json,
    error_of,
    load_config,
    open_home,
    parse_ref,
    progress_bar,
    quiet,
    say,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from p2pckpt.errors import PushIncomplete
    from p2pckpt.transfer.push_client import PushReport, TargetResult

PROGRESS_LINE_EVERY = 5.0


class _TargetProgress:
    """One target's progress, as a rich bar or as occasional plain lines."""

    def __init__(self, label: str, bar: Progress | None, quiet: bool) -> None:
        self._label = label
        self._bar = bar
        self._quiet = quiet
        self._task: TaskID | None = None
        self._last_line = 0.0

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self._label, total=total)
            self._bar.update(self._task, completed=done, total=total)
        elif not self._quiet and time.monotonic() - self._last_line >= PROGRESS_LINE_EVERY:
            self._last_line = time.monotonic()
            pct = 100 * done // total if total else 100
            click.echo(
                f"{self._label}: pulling {done / 1e6:.1f} of {total / 1e6:.1f} MB ({pct}%)",
                err=True,
            )


@command()
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option(
    "--to",
    "targets",
    multiple=True,
    required=True,
    metavar="ADDR",
    help="Target daemon: HOST:PORT, peer ID or trusted name (repeatable).",
)
@click.option(
    "--listen",
    default="0.0.0.0:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the targets pull from (this command serves while it runs).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object at the end.")
@config_option
def push(
    ref: str, targets: tuple[str, ...], listen: str, as_json: bool, config_path: Path | None
) -> None:
    """Ask daemons to pull NAME[@VERSION] from this node; wait until verified."""
    import trio

    from p2pckpt.config import parse_addr
    from p2pckpt.discovery.finder import connect_each, parse_target
    from p2pckpt.errors import NotFound, PushIncomplete
    from p2pckpt.manifest.paths import safe_display
    from p2pckpt.transfer.push_client import push_version

    home = open_home()
    cfg = load_config(home, config_path)
    name, version = parse_ref(ref)
    entry = home.catalog.find(name, version)
    if entry is None:
        raise NotFound(f"this node holds no {ref}: publish or pull it first")
    parsed = [(t, parse_target(t, home)) for t in targets]
    addr = parse_addr(listen, allow_zero=True)
    bar = progress_bar(sys.stderr.isatty() and not as_json)
    shown: dict[str, _TargetProgress] = {}

    def on_progress(label: str, done: int, total: int) -> None:
        if label not in shown:
            shown[label] = _TargetProgress(safe_display(label), bar, quiet=as_json or quiet())
        shown[label].update(done, total)

    def on_result(label: str, result: TargetResult) -> None:
        if not as_json:
            mark = "ok" if result.ok else "FAILED"
            say(f"{safe_display(label)}: {mark}: {safe_display(result.message)}")

    async def run() -> PushReport:
        reached = await connect_each(home, cfg, [target for _, target in parsed])
        labelled = [(label, made) for (label, _), made in zip(parsed, reached, strict=True)]
        return await push_version(home, cfg, entry, labelled, addr, on_progress, on_result)

    with bar if bar is not None else contextlib.nullcontext():
        report = trio.run(run)
    failure = None
    if not report.ok:
        failure = PushIncomplete(f"not every target verified {entry.name}@{entry.version}")
    _print_report(report, as_json, failure)
    if failure is not None:
        raise failure


def _print_report(report: PushReport, as_json: bool, failure: PushIncomplete | None) -> None:
    if as_json:
        doc: dict[str, object] = {
            "name": report.name,
            "version": report.version,
            "ok": report.ok,
            "bytes_served": report.bytes_served,
            "targets": {label: r.as_json() for label, r in report.targets.items()},
        }
        if failure is not None:
            doc["error"] = error_of(failure)
        emit_json(doc)
    else:
        served = report.bytes_served
        say(
            f"uploaded {served / 1e6:.1f} MB for {len(report.targets)} target(s)"
            f" ({served / max(report.total_bytes, 1):.2f}x the version)"
        )
