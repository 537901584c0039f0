"""``p2pckpt pull``: fetch a version from trusted peers and verify every byte.

SIGTERM stops it as Ctrl-C does (exit 130), resumable (``run_stoppable``).
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
    as_json: bool,
    config_path: Path | None,
    relay: str | None,
) -> None:
    """Pull NAME (newest) or NAME@VERSION; exits 0 only once every byte is verified."""
    import contextlib

    from p2pckpt.discovery.finder import connect_targets, parse_targets
    from p2pckpt.discovery.sharing import sharing
    from p2pckpt.transfer import pull as pulling
    from p2pckpt.transfer.throttle import Throttle

    name, version = parse_ref(ref)
    dest = Path(dest_text) if dest_text is not None else None
    _check_args(name, dest, hf_cache, hf_repo)
    cache_dir = hf_cache.expanduser().absolute() if hf_cache is not None else None
    home = open_home()
    cfg = load_config(home, config_path, **relay_flag(relay))
    targets = parse_targets(sources, home)
    _check_publishers(home, publishers)
    accept = pulling.Accept(publishers, allow_expired)
    bar = progress_bar(sys.stderr.isatty())
    progress = _RichProgress(bar) if bar is not None else None
    streams = streams or pulling.DEFAULT_STREAMS

    async def run() -> PullResult:
        conns = await connect_targets(home, cfg, targets)
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
                into=dest_text is not None and dest_text.endswith("/"),
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


def _print_result(result: PullResult, as_json: bool) -> None:
    """The summary (or --json document), then a warning per peer dropped as bad."""
    import dataclasses

    if as_json:
        doc = dataclasses.asdict(result)
        doc["seconds"] = round(result.seconds, 3)
        emit_json(doc)
    else:
        rate = result.bytes_downloaded / result.seconds / 1e6 if result.seconds else 0.0
        say(
            f"pulled {result.name}@{result.version} to {result.dest}: "
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
