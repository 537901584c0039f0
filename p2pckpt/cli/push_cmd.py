"""``p2pckpt push``: have other daemons pull a version from us, and wait.

The command serves the version itself for as long as it runs (a temporary
seeder on ``--listen``) and asks each target to pull it back; see
``p2pckpt.transfer.push_client``. It prints each target's verified result.
While targets pull, each one's progress is shown: a bar per target on a
terminal, else a line per target at most every PROGRESS_LINE_EVERY seconds.
Exit 0 only if every target verified (else ``PushIncomplete``, 12).
``--dry-run`` (issue 19) reaches each target and asks whether it holds the
version whole (a ``Have``), asks none to pull, serves nothing, and exits 0.
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

    from p2pckpt.config import Config
    from p2pckpt.discovery.finder import Target
    from p2pckpt.errors import PushIncomplete
    from p2pckpt.home import Home
    from p2pckpt.store.catalog import Entry
    from p2pckpt.transfer.peer import PeerConnection
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be pushed to whom (asking each target what it holds); write nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object at the end.")
@config_option
def push(
    ref: str,
    targets: tuple[str, ...],
    listen: str,
    dry_run: bool,
    as_json: bool,
    config_path: Path | None,
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
    entry = home.catalog.find(name, version, whole=True)  # not a partial copy (issue 19)
    if entry is None:
        raise NotFound(f"this node holds no whole {ref}: publish or pull it first")
    parsed = [(t, parse_target(t, home)) for t in targets]
    addr = parse_addr(listen, allow_zero=True)
    if dry_run:
        _dry_run(home, cfg, entry, parsed, as_json)
        return
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


def _dry_run(
    home: Home, cfg: Config, entry: Entry, parsed: list[tuple[str, Target]], as_json: bool
) -> None:
    """What a push would do: each target reached and asked whether it holds
    the version whole; a target that does not (or does not say) would pull
    at most the whole version (it reuses what it holds). Nothing is written."""
    import trio

    from p2pckpt.cli.common import human
    from p2pckpt.discovery.finder import connect_each
    from p2pckpt.errors import P2pckptError
    from p2pckpt.manifest.paths import safe_display
    from p2pckpt.wire import messages as m

    manifest = entry.manifest()
    total = manifest.total_bytes

    async def ask(conn: PeerConnection) -> bool | None:
        try:
            reply = await conn.request(m.HaveRequest(entry.root))
        except P2pckptError:
            return None
        finally:
            await conn.aclose()
        return reply.complete if isinstance(reply, m.Have) else None

    async def run() -> list[dict[str, object]]:
        reached = await connect_each(home, cfg, [target for _, target in parsed])
        out: list[dict[str, object]] = []
        for (label, _), made in zip(parsed, reached, strict=True):
            row: dict[str, object] = {"target": label, "reachable": False, "has_version": None}
            if isinstance(made, P2pckptError):
                row["problem"] = str(made)
            else:
                row.update(reachable=True, id=str(made.peer), has_version=await ask(made))
            row["bytes_to_download"] = 0 if row["has_version"] else total
            out.append(row)
        return out

    rows = trio.run(run)
    doc = {
        "name": entry.name,
        "version": entry.version,
        "bytes_total": total,
        "files": [{"path": f.path, "size": f.size} for f in manifest.files],
        "targets": rows,
        "bytes_to_download": sum(int(str(r["bytes_to_download"])) for r in rows),
        "bytes_reused": sum(total for r in rows if r["has_version"]),
        "dry_run": True,
    }
    if as_json:
        emit_json(doc)
        return
    click.echo(
        f"would push {entry.name}@{entry.version} ({human(total)},"
        f" {len(manifest.files)} file(s)) to {len(rows)} target(s)"
    )
    for r in rows:
        label = safe_display(str(r["target"]))
        if not r["reachable"]:
            click.echo(f"  {label}: unreachable: {safe_display(str(r.get('problem')))}")
        elif r["has_version"]:
            click.echo(f"  {label}: holds it already")
        else:
            click.echo(f"  {label}: would pull up to {human(total)} (it reuses what it holds)")
    click.echo("(dry run: nothing written, no target asked to pull)")


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
