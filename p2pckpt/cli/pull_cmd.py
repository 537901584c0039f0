"""``p2pckpt pull``: fetch a version from trusted peers and verify every byte.

SIGTERM stops it as Ctrl-C does (exit 130), resumable (``run_stoppable``).
``--include``/``--exclude`` take only some files (``manifest.select``);
``--dry-run`` says what a pull would do and writes nothing (``transfer.dryrun``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import (
    Size,
    command,
    config_option,
    emit_json,
    load_config,
    open_home,
    parse_ref,
    progress_bar,
    relay_flag,
    relay_option,
    say,
)
from p2pckpt.cli.stopping import run_stoppable
from p2pckpt.errors import ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from p2pckpt.home import Home
    from p2pckpt.transfer.dryrun import PullPlan
    from p2pckpt.transfer.pull import PullResult


class _RichProgress:
    """``transfer.pull.Progress`` on a rich bar."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def start(self, name: str, total: int, done: int) -> None:
        self._task = self._bar.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)


@command()
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option(
    "--from",
    "sources",
    multiple=True,
    metavar="ADDR",
    help="HOST:PORT, peer ID or trusted peer name (repeatable; default: find peers).",
)
@click.option(
    "-o",
    "--output",
    "dest_text",
    type=click.Path(),
    default=None,
    metavar="DEST",
    help="Where to put it (default: ./FILE for a one-file checkpoint, ./NAME for a directory);"
    " into an existing directory as cp does: DIR/FILE, and DIR/ (trailing slash) holding"
    " something else means DIR/NAME.",
)
@click.option(
    "--streams", type=click.IntRange(1, 16), default=None, help="Connections to each source."
)
@click.option(
    "--max-rate",
    type=Size(),
    default=None,
    metavar="RATE",
    help="Download cap for this pull (all sources together), bytes/s: 5000000, 10M (MB/s,"
    " powers of 1000) or 10MiB (powers of 1024).",
)
@click.option(
    "--into-hf-cache",
    "hf_cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Lay the version out in this Hugging Face hub cache (blobs, snapshot, refs).",
)
@click.option(
    "--hf-repo",
    default=None,
    metavar="ORG/NAME",
    help="With --into-hf-cache: the repo to file it under (default: the publisher's).",
)
@click.option(
    "--publisher",
    "publishers",
    multiple=True,
    metavar="ID|NAME",
    help="Only versions signed by this publisher (repeatable; default: every peer trusted"
    " with the publish role).",
)
@click.option(
    "--allow-expired",
    is_flag=True,
    help="Take the newest version even if its signed expiry has passed.",
)
@click.option(
    "--share/--no-share",
    default=True,
    help="While pulling, serve verified chunks to trusted peers pulling the same version,"
    " and pull from those found on the LAN (mDNS; default: on).",
)
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="GLOB",
    help="Only files whose path matches (fnmatch, repeatable; default: every file).",
)
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    metavar="GLOB",
    help="Not the files whose path matches (repeatable).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say which version, from which peers, what would be downloaded and reused; write nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@config_option
@relay_option
def pull(
    ref: str,
    sources: tuple[str, ...],
    dest_text: str | None,
    streams: int | None,
    max_rate: int | None,
    hf_cache: Path | None,
    hf_repo: str | None,
    publishers: tuple[str, ...],
    allow_expired: bool,
    share: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    config_path: Path | None,
    relay: str | None,
) -> None:
    """Pull NAME (newest) or NAME@VERSION; exits 0 only once every byte is verified."""
    import contextlib

    import trio

    from p2pckpt.discovery.finder import connect_targets, parse_targets
    from p2pckpt.discovery.sharing import sharing
    from p2pckpt.manifest.select import check_patterns
    from p2pckpt.transfer import pull as pulling
    from p2pckpt.transfer.throttle import Throttle

    name, version = parse_ref(ref)
    dest = Path(dest_text) if dest_text is not None else None
    _check_args(name, dest, hf_cache, hf_repo)
    check_patterns("--include", include)
    check_patterns("--exclude", exclude)
    if hf_cache is not None and (include or exclude or dry_run):
        raise ConfigError(
            "--into-hf-cache takes the whole version: no --include, --exclude or --dry-run"
        )
    cache_dir = hf_cache.expanduser().absolute() if hf_cache is not None else None
    home = open_home()
    cfg = load_config(home, config_path, **relay_flag(relay))
    targets = parse_targets(sources, home)
    _check_publishers(home, publishers)
    accept = pulling.Accept(publishers, allow_expired)
    bar = progress_bar(sys.stderr.isatty())
    progress = _RichProgress(bar) if bar is not None else None
    streams = streams or pulling.DEFAULT_STREAMS

    if dry_run:

        async def plan() -> PullPlan:
            from p2pckpt.transfer.dryrun import plan_pull

            conns = await connect_targets(home, cfg, targets)
            offer = await pulling.choose_source(home, conns, name, version, accept, note=False)
            into = dest_text is not None and dest_text.endswith("/")
            return await plan_pull(home, offer, dest, include, exclude, into)

        _print_plan(trio.run(plan), as_json)
        return

    async def run() -> PullResult:
        unreached: list[str] = []  # named if a file has no source (a host gone)
        conns = await connect_targets(home, cfg, targets, unreached)
        throttles = [Throttle(max_rate)] if max_rate else None
        if cache_dir is not None:
            from p2pckpt.interop.hfpull import pull_into_cache

            offer = await pulling.choose_source(home, conns, name, version, accept)
            return await pull_into_cache(
                home, offer, cache_dir, hf_repo, streams, progress, throttles
            )
        async with sharing(home, cfg, share) as shared:
            return await pulling.pull(
                home,
                conns,
                name,
                version,
                dest,
                streams,
                progress,
                throttles=throttles,
                accept=accept,
                partials=shared.partials if shared is not None else None,
                found=shared.found if shared is not None else None,
                include=include,
                exclude=exclude,
                into=dest_text is not None and dest_text.endswith("/"),
                unreached=unreached,
            )

    with bar if bar is not None else contextlib.nullcontext():
        result = run_stoppable(run)  # SIGTERM: a clean stop, resumable, exit 130
    _print_result(result, as_json)


def _check_args(name: str, dest: Path | None, hf_cache: Path | None, hf_repo: str | None) -> None:
    """Refuse a bad name or a bad mix of flags before touching the home."""
    from p2pckpt.errors import ManifestError
    from p2pckpt.manifest.manifest import validate_name

    try:
        validate_name(name)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None
    if dest is not None and not str(dest).strip():
        raise ConfigError("-o needs a path")
    if hf_cache is not None and dest is not None:
        raise ConfigError("give -o or --into-hf-cache, not both")
    if hf_repo is not None and hf_cache is None:
        raise ConfigError("--hf-repo goes with --into-hf-cache")
    if hf_repo is not None:
        from p2pckpt.interop.hfcache import parse_repo

        parse_repo(hf_repo)


def _check_publishers(home: Home, publishers: tuple[str, ...]) -> None:
    """Each --publisher must be this node or a trusted peer: a typo must not
    quietly match nobody."""
    for who in publishers:
        try:
            publisher = home.trust.resolve(who)
        except ConfigError:
            publisher = None
        if publisher is None or (
            publisher != home.key.peer_id and home.trust.get(publisher) is None
        ):
            raise ConfigError(
                f"--publisher {who}: not a trusted peer's name or ID (see p2pckpt trust ls)"
            )


def _mb(n: object) -> str:
    return f"{int(n) / 1e6:.1f}" if isinstance(n, int | float) else "?"


def _size(n: object) -> str:
    from p2pckpt.cli.common import human

    return human(int(n)) if isinstance(n, int | float) else "?"


def _print_plan(plan: PullPlan, as_json: bool) -> None:
    """The dry run's report: one JSON object, or a few lines."""
    import dataclasses

    from p2pckpt.cli.common import human
    from p2pckpt.manifest.paths import safe_display

    if as_json:
        emit_json(dataclasses.asdict(plan))
        return
    label = f"{plan.name}@{plan.version}"
    what = "" if plan.selection is None else f" ({len(plan.files)} selected file(s))"
    click.echo(f"would pull {label}{what} to {safe_display(plan.dest)}")
    for peer in plan.peers:
        click.echo(f"  from {peer['id']} ({safe_display(str(peer['route']))})")
    if plan.present:
        click.echo(f"  already there: {human(plan.bytes_total)} verified; nothing to download")
        return
    click.echo(
        f"  {human(plan.bytes_to_download)} to download (at most),"
        f" {human(plan.bytes_reused)} reused from this node, of {human(plan.bytes_total)}"
    )
    free = "?" if plan.disk_free is None else human(plan.disk_free)
    click.echo(f"  disk space needed: {human(plan.disk_needed)} ({free} free)")
    click.echo("  DEST would be updated in place" if plan.in_place else "  DEST would be created")
    for f in plan.files:
        click.echo(
            f"  {safe_display(str(f['path']))}: {_size(f['size'])},"
            f" {_size(f['download'])} to download"
        )
    click.echo("(dry run: nothing written)")


def _print_result(result: PullResult, as_json: bool) -> None:
    """The summary (or --json document), then a warning per peer dropped as bad."""
    import dataclasses

    if as_json:
        doc = dataclasses.asdict(result)
        doc["seconds"] = round(result.seconds, 3)
        emit_json(doc)
    else:
        rate = result.bytes_downloaded / result.seconds / 1e6 if result.seconds else 0.0
        part = "" if result.selection is None else f" ({result.files} selected file(s))"
        say(
            f"pulled {result.name}@{result.version}{part} to {result.dest}: "
            f"{result.bytes_total / 1e6:.1f} MB verified, {result.bytes_downloaded / 1e6:.1f} MB"
            f" downloaded in {result.seconds:.1f}s ({rate:.0f} MB/s),"
            f" {result.bytes_reused / 1e6:.1f} MB already present"
        )
        if len(result.peers) > 1:
            for peer in result.peers:
                say(
                    f"  {peer['id']}: {_mb(peer['bytes'])} MB"
                    f" ({peer['status']}{': ' + str(peer['problem']) if 'problem' in peer else ''})"
                )
    for peer in result.peers:
        if peer["status"] == "bad":
            click.echo(
                f"p2pckpt: warning: peer {peer['id']} {peer['problem']}; it was dropped and"
                " its chunks fetched from other peers",
                err=True,
            )
