"""The subcommands. Each parses, calls the library, and prints."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from p2pckpt.cli.main import cli, emit_json, fail, home_option, home_path, open_home, run_stoppable
from p2pckpt.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def command(group: click.Group = cli, **kwargs: Any) -> Callable[[F], F]:
    """A subcommand that also accepts ``--home`` after its name."""

    def wrap(fn: F) -> F:
        return group.command(**kwargs)(home_option(fn))  # type: ignore[return-value]

    return wrap


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: HOME/config.toml).",
)


def _config(home: Any, config_path: Path | None, **flags: Any) -> Any:
    from p2pckpt.config import load

    return load(home.path, config_path).with_flags(**flags)


def _parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit():
        fail(f"bad version in {ref!r}: use NAME@NUMBER")
    return name, int(version)


@command()
@click.option("--force", is_flag=True, help="Make a new key even if this home has state.")
def init(force: bool) -> None:
    """Create this node's key, trust store and catalog (idempotent)."""
    from p2pckpt.home import Home

    home, created = Home.init(home_path(), force=force)
    click.echo(f"{'created' if created else 'already initialised'}: {home.path}", err=True)
    click.echo(str(home.key.peer_id))


@command(name="id")
def show_id() -> None:
    """Print this node's peer ID."""
    click.echo(str(open_home().key.peer_id))


@cli.group()
def trust() -> None:
    """Manage the peers this node talks to."""


@command(trust, name="add")
@click.argument("peer_id")
@click.option("--name", default="", help="A label for the peer.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["pull", "publish", "push"]),
    help="What that peer may do here (repeatable; default: pull only): pull = fetch our"
    " checkpoints, publish = versions it signs are accepted here, push = ask us to pull.",
)
def trust_add(peer_id: str, name: str, roles: tuple[str, ...]) -> None:
    """Trust PEER_ID with ROLEs (adding it again replaces its roles)."""
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.identity.trust import DEFAULT_ROLES

    home = open_home()
    pid = PeerId.parse(peer_id)
    if pid == home.key.peer_id:
        fail("that is this node's own ID (a node always trusts itself)")
    old = home.trust.get(pid)
    peer = home.trust.add(pid, name or (old.name if old else ""), roles or DEFAULT_ROLES)
    home.save_trust()
    verb = "trusted" if old is None else "updated"
    if old is not None and old.roles != peer.roles:
        verb += f" (roles were {', '.join(sorted(old.roles))})"
    click.echo(f"{verb} {peer.peer_id} ({peer.name or '-'}): {', '.join(sorted(peer.roles))}")


@command(trust, name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def trust_ls(as_json: bool) -> None:
    """List trusted peers."""
    peers = list(open_home().trust)
    if not peers and not as_json:
        click.echo("no trusted peers (add one with 'p2pckpt trust add PEER_ID')", err=True)
    if as_json:
        emit_json([{"id": str(p.peer_id), "name": p.name, "roles": sorted(p.roles)} for p in peers])
        return
    from p2pckpt.identity.trust import ROLE_WORDS, ROLES

    if peers:
        width = max(len(str(p.peer_id)) for p in peers)
        click.echo(f"{'PEER ID':<{width}}  {'NAME':<16} ROLES (what that peer may do here)")
    for p in peers:
        words = "; ".join(ROLE_WORDS[r] for r in ROLES if r in p.roles)
        click.echo(f"{p.peer_id}  {p.name or '-':<16} {','.join(sorted(p.roles))}: {words}")


@command(trust, name="rm")
@click.argument("peer", metavar="PEER_ID|NAME")
def trust_rm(peer: str) -> None:
    """Stop trusting a peer (by ID or by its --name), at once, running daemon included.

    What it signed is forgotten too: the newest versions seen from it (so a
    stolen key's huge version number blocks nothing) and the versions pulled
    from it, which are no longer offered (their files stay)."""
    home = open_home()
    pid = home.trust.resolve(peer)
    home.trust.remove(pid)
    home.save_trust()
    names, rows = home.catalog.forget_publisher(pid.key)
    click.echo(f"removed {pid}")
    if names or rows:
        dropped = ", ".join(f"{e.name}@{e.version}" for e in rows) or "none"
        click.echo(
            f"forgot what it signed: newest-version records for {names} name(s); versions"
            f" no longer offered: {dropped} (files left in place)"
        )


def _progress_bar(enabled: bool) -> Any:
    """A rich progress display on stderr, or None when not a terminal."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


@command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--name", default=None, help="Checkpoint name (with --hf-cache: default NAME).")
@click.option("--version", type=click.IntRange(0), default=None, help="Default: newest + 1.")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata (repeatable).")
@click.option(
    "--expires",
    default=None,
    metavar="DURATION",
    help="Sign an expiry (e.g. 12h, 7d): after it, pullers refuse this as the newest version"
    " (publish again to extend).",
)
@click.option(
    "--hf-cache",
    "hf_repo",
    default=None,
    metavar="ORG/NAME[@REV]",
    help="Publish a snapshot from the Hugging Face cache instead of PATH (REV: branch, tag"
    " or commit; default main).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The Hugging Face hub cache (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub).",
)
@click.option(
    "--replicas",
    type=click.IntRange(0),
    default=0,
    metavar="K",
    help="Return only once K trusted peers hold a verified copy (exit 13 on timeout).",
)
@click.option(
    "--replicas-timeout",
    "timeout",
    type=click.FloatRange(0, min_open=True),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long --replicas waits.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def publish(
    path: Path | None,
    name: str | None,
    version: int | None,
    meta: tuple[str, ...],
    expires: str | None,
    hf_repo: str | None,
    cache_dir: Path | None,
    replicas: int,
    timeout: float,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Publish PATH (a file or a directory) as NAME."""
    import time

    from p2pckpt.publish import parse_meta
    from p2pckpt.publish import publish as do_publish

    extra = parse_meta(list(meta))
    expires_at = None
    if expires is not None:
        from p2pckpt.config import parse_duration

        expires_at = int(time.time()) + parse_duration(expires)
    if hf_repo is not None:
        if path is not None:
            raise ConfigError("give PATH or --hf-cache, not both")
        path, name, extra = _hf_source(hf_repo, cache_dir, name, extra)
    elif path is None or name is None:
        raise ConfigError("publish needs PATH and --name (or --hf-cache ORG/NAME)")
    home = open_home()
    bar = _progress_bar(sys.stderr.isatty())
    task: list[Any] = []
    started = time.monotonic()

    def on_total(total: int) -> None:
        if bar is not None:
            task.append(bar.add_task(f"hashing {name}", total=total))

    def on_bytes(n: int) -> None:
        if bar is not None and task:
            bar.advance(task[0], n)

    if bar is not None:
        bar.start()
    try:
        manifest = do_publish(
            home, path, name, version, extra, on_bytes, on_total, expires=expires_at
        )
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.monotonic() - started
    doc = {
        "name": manifest.name,
        "version": manifest.version,
        "publisher": str(manifest.publisher),
        "root": manifest.root.hex(),
        "files": len(manifest.files),
        "chunks": manifest.chunk_count,
        "bytes": manifest.total_bytes,
        "seconds": round(seconds, 3),
        "expires": manifest.expires,
    }
    if not as_json:
        rate = manifest.total_bytes / seconds / 1e6 if seconds > 0 else 0
        click.echo(
            f"published {manifest.name}@{manifest.version}: {len(manifest.files)} file(s),"
            f" {manifest.total_bytes / 1e6:.1f} MB, {manifest.chunk_count} chunks"
            f" ({rate:.0f} MB/s)"
        )
    if replicas:
        from p2pckpt.errors import ReplicasMissing

        try:
            report = _wait_replicas(home, _config(home, config_path), manifest, replicas, timeout)
        except ReplicasMissing as exc:
            if as_json:
                doc["replicas"] = exc.report.as_json()  # type: ignore[attr-defined]
                emit_json(doc)
            raise
        doc["replicas"] = report.as_json()
        if not as_json:
            click.echo(f"safe on {report.describe()}")
    if as_json:
        emit_json(doc)


def _wait_replicas(home: Any, cfg: Any, manifest: Any, wanted: int, timeout: float) -> Any:
    """Block until ``wanted`` trusted peers hold the version; progress on stderr."""
    import trio

    from p2pckpt.replicas import wait_for_replicas

    reported: list[str] = []

    def on_change(report: Any) -> None:
        # One line per peer: two peers can become holders in the same round.
        for peer in report.holding:
            if peer not in reported:
                reported.append(peer)
                click.echo(
                    f"replica {len(reported)}/{wanted}: {report.label(peer)} holds it"
                    f" ({report.seconds:.1f}s)",
                    err=True,
                )

    click.echo(
        f"waiting up to {timeout:.0f}s for {wanted} trusted peer(s) to hold"
        f" {manifest.name}@{manifest.version}",
        err=True,
    )
    return trio.run(wait_for_replicas, home, cfg, manifest, wanted, timeout, on_change)


def _hf_source(
    spec: str, cache_dir: Path | None, name: str | None, meta: dict[str, str]
) -> tuple[Path, str, dict[str, str]]:
    """The snapshot folder, checkpoint name and meta for ``--hf-cache``."""
    from p2pckpt import hfcache

    repo_id, revision = hfcache.parse_repo(spec)
    folder, commit, branch = hfcache.snapshot(
        cache_dir or hfcache.default_cache(), repo_id, revision
    )
    found = {"hf_repo": repo_id, "hf_revision": commit, **hfcache.card_meta(folder)}
    if branch is not None:
        found["hf_ref"] = branch
    return folder, name or repo_id.rpartition("/")[2], {**found, **meta}


@command(name="ls")
@click.option(
    "--peer", "peers", multiple=True, metavar="ADDR", help="Only this peer (HOST:PORT, ID or name)."
)
@click.option("--local", is_flag=True, help="Only what this node holds; ask no peer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
def ls(peers: tuple[str, ...], local: bool, as_json: bool, config_path: Path | None) -> None:
    """List versions held here and offered by reachable trusted peers."""
    from p2pckpt.identity.peer_id import PeerId

    home = open_home()

    def who(key: bytes) -> str:
        pid = PeerId(key)
        if pid == home.key.peer_id:
            return "self"
        known = home.trust.get(pid)
        return known.name if known is not None and known.name else pid.short

    rows: list[dict[str, Any]] = []
    if not peers:
        metas = home.catalog.metas()
        for e in home.catalog.summaries():
            rows.append(
                {
                    "name": e.name,
                    "version": e.version,
                    "publisher": str(PeerId(e.publisher)),
                    "publisher_name": who(e.publisher),
                    "bytes": e.total_bytes,
                    "files": e.file_count,
                    "where": "local",
                    "origin": e.origin,
                    "location": e.location,
                    "meta": metas.get(e.root, {}),
                }
            )
    if not local:
        for conn_peer, route, version in _remote_versions(home, _config(home, config_path), peers):
            rows.append(
                {
                    "name": version.name,
                    "version": version.version,
                    "publisher": str(PeerId(version.publisher)),
                    "publisher_name": who(version.publisher),
                    "bytes": version.total_bytes,
                    "files": version.file_count,
                    "where": str(conn_peer),
                    "where_name": who(conn_peer.key),
                    "route": route,
                    "meta": dict(version.meta),
                }
            )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no checkpoints", err=True)
        return
    _print_table(rows)


_LS_COLUMNS = ("VERSION", "SIZE", "FILES", "FORMAT", "STEP", "BASE MODEL", "LICENSE", "BY")
_LISTED = ("format", "step", "base_model", "license")


def _print_table(rows: list[dict[str, Any]]) -> None:
    """One line per version under a header; every peer-given string escaped (R-41)."""
    from p2pckpt.manifest.paths import safe_display

    table = [[*_LS_COLUMNS, "WHERE"]]
    for r in rows:
        meta = r["meta"]
        cells = [
            f"{r['name']}@{r['version']}",
            _human(r["bytes"]),
            str(r["files"]),
            *(meta.get(key) or "-" for key in _LISTED),
            r["publisher_name"],
        ]
        if r["where"] == "local":
            where = f"{r['origin']}: {r['location']}"
            extra = sorted((k, v) for k, v in meta.items() if k not in _LISTED)
            if extra:
                where += "  " + " ".join(f"{k}={v}" for k, v in extra)
        else:
            where = f"offered by {r['where_name']} ({r['route']})"
        table.append([safe_display(c) for c in [*cells, where]])
    widths = [max(len(line[i]) for line in table) for i in range(len(_LS_COLUMNS))]
    right = {1, 2}  # sizes and counts line up on the right
    for line in table:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        ]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


def _remote_versions(home: Any, cfg: Any, peers: tuple[str, ...]) -> list[tuple[Any, str, Any]]:
    """(peer, route, VersionInfo) for every version the given (or found) peers offer.

    With explicit peers, failures are errors; when discovering, an unreachable
    peer is only reported on stderr, since local versions are still worth listing.
    """
    import trio

    from p2pckpt.discovery.finder import open_finder, parse_target
    from p2pckpt.errors import P2pckptError
    from p2pckpt.transfer.pull import list_remote

    targets = [parse_target(p, home) for p in peers] or None

    async def run() -> list[tuple[Any, str, Any]]:
        need_mdns = targets is None or any(not isinstance(t, tuple) for t in targets)
        async with open_finder(home, cfg, use_mdns=need_mdns) as finder:
            try:
                conns = await finder.connect_all(targets)
            except P2pckptError as exc:
                if targets is not None:
                    raise
                click.echo(f"(no peers listed: {exc})", err=True)
                return []
        out: list[tuple[Any, str, Any]] = []
        for conn in conns:
            try:
                out += [(conn.peer, conn.route, v) for v in await list_remote(conn)]
            finally:
                await conn.aclose()
        return out

    return trio.run(run)


def _human(n: int) -> str:
    """Bytes for people: 1 decimal, powers of 1000 (as disk vendors and rates)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@command()
@click.option("--listen", default=None, metavar="HOST:PORT", help="Default 0.0.0.0:7450.")
@click.option("--no-mdns", is_flag=True, help="Do not announce on the LAN (mDNS).")
@click.option("--relay", default=None, metavar="HOST:PORT", help="Be reachable through a relay.")
@config_option
def serve(listen: str | None, no_mdns: bool, relay: str | None, config_path: Path | None) -> None:
    """Serve this node's checkpoints in the foreground until SIGTERM/Ctrl-C."""
    import signal

    import trio

    from p2pckpt.config import parse_addr
    from p2pckpt.daemon.app import start_reachability
    from p2pckpt.transfer.serve import Server

    home = open_home()
    cfg = _config(
        home,
        config_path,
        listen=listen,
        mdns=False if no_mdns else None,
        relay=parse_addr(relay) if relay else None,
    )
    host, port = parse_addr(cfg.listen, allow_zero=True)
    logging.getLogger("p2pckpt").setLevel(min(logging.getLogger().level, logging.INFO))
    log = logging.getLogger("p2pckpt.serve")

    async def run() -> None:
        server = Server(
            home,
            upload=cfg.upload,
            compress=cfg.compress != "off",
            per_peer=cfg.upload_per_peer,
        )
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, port)
            for lst in listeners:
                addr = lst.socket.getsockname()
                click.echo(f"listening on {addr[0]}:{addr[1]}")
            sys.stdout.flush()
            await start_reachability(nursery, home, cfg, server, listeners)
            held = len(home.catalog.summaries())
            trusted = sum(1 for p in home.trust if "pull" in p.roles)
            click.echo(
                f"peer ID {home.key.peer_id}; serving {held} version(s) to"
                f" {trusted} peer(s) with the pull role"
                + (" (announced on the LAN)" if cfg.mdns else "")
                + (
                    f" (reachable through relay {cfg.relay[0]}:{cfg.relay[1]})" if cfg.relay else ""
                ),
                err=True,
            )
            if not trusted:
                click.echo(
                    "warning: no peer may pull from us yet: 'p2pckpt trust add PEER_ID'", err=True
                )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)


class _RichProgress:
    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._task: Any = None

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
    "dest",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to put it (default: ./FILE for a one-file checkpoint, ./NAME for a directory).",
)
@click.option(
    "--streams", type=click.IntRange(1, 16), default=None, help="Connections to each source."
)
@click.option(
    "--max-rate",
    type=click.IntRange(1),
    default=None,
    metavar="BYTES_PER_S",
    help="Download cap for this pull (all sources together).",
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@config_option
def pull(
    ref: str,
    sources: tuple[str, ...],
    dest: Path | None,
    streams: int | None,
    max_rate: int | None,
    hf_cache: Path | None,
    hf_repo: str | None,
    publishers: tuple[str, ...],
    allow_expired: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Pull NAME (newest) or NAME@VERSION; exits 0 only once every byte is verified."""
    import dataclasses

    from p2pckpt.transfer import pull as pulling
    from p2pckpt.transfer.throttle import Throttle

    name, version = _parse_ref(ref)
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
        from p2pckpt.hfcache import parse_repo

        parse_repo(hf_repo)
    cache_dir = hf_cache.expanduser().absolute() if hf_cache is not None else None
    from p2pckpt.discovery.finder import open_finder, parse_target

    home = open_home()
    cfg = _config(home, config_path)
    targets = [parse_target(s, home) for s in sources] or None
    for who in publishers:  # a typo must not quietly match nobody
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
    accept = pulling.Accept(publishers, allow_expired)
    bar = _progress_bar(sys.stderr.isatty())
    progress = _RichProgress(bar) if bar is not None else None

    async def run() -> pulling.PullResult:
        # mDNS is only needed to resolve peer IDs or to discover peers.
        need_mdns = targets is None or any(not isinstance(t, tuple) for t in targets)
        async with open_finder(home, cfg, use_mdns=need_mdns) as finder:
            conns = await finder.connect_all(targets)
        throttles = [Throttle(max_rate)] if max_rate else None
        if cache_dir is not None:
            from p2pckpt.transfer.hfpull import pull_into_cache

            offer = await pulling.choose_source(home, conns, name, version, accept)
            return await pull_into_cache(
                home,
                offer,
                cache_dir,
                hf_repo,
                streams or pulling.DEFAULT_STREAMS,
                progress,
                throttles,
            )
        return await pulling.pull(
            home,
            conns,
            name,
            version,
            dest,
            streams or pulling.DEFAULT_STREAMS,
            progress,
            throttles=throttles,
            accept=accept,
        )

    if bar is not None:
        bar.start()
    try:
        result = run_stoppable(run)  # SIGTERM: a clean stop, resumable, exit 130
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        doc = dataclasses.asdict(result)
        doc["seconds"] = round(result.seconds, 3)
        emit_json(doc)
    else:
        rate = result.bytes_downloaded / result.seconds / 1e6 if result.seconds else 0.0
        click.echo(
            f"pulled {result.name}@{result.version} to {result.dest}: "
            f"{result.bytes_total / 1e6:.1f} MB verified, {result.bytes_downloaded / 1e6:.1f} MB"
            f" downloaded in {result.seconds:.1f}s ({rate:.0f} MB/s),"
            f" {result.bytes_reused / 1e6:.1f} MB already present"
        )
        if len(result.peers) > 1:
            for peer in result.peers:
                click.echo(
                    f"  {peer['id']}: {int(peer['bytes']) / 1e6:.1f} MB"  # type: ignore[call-overload]
                    f" ({peer['status']}{': ' + str(peer['problem']) if 'problem' in peer else ''})"
                )
    for peer in result.peers:
        if peer["status"] == "bad":
            click.echo(
                f"p2pckpt: warning: peer {peer['id']} {peer['problem']}; it was dropped and"
                " its chunks fetched from other peers",
                err=True,
            )
