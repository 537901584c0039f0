"""``p2pckpt publish``: hash a file, a directory or a Hugging Face snapshot in
place, sign its manifest and offer it; with ``--replicas K``, wait until K
trusted peers hold a verified copy."""

from __future__ import annotations

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
    note,
    open_home,
    progress_bar,
    say,
)
from p2pckpt.errors import ConfigError

if TYPE_CHECKING:
    from rich.progress import TaskID

    from p2pckpt.config import Config
    from p2pckpt.home import Home
    from p2pckpt.manifest.manifest import Manifest
    from p2pckpt.replicas import ReplicaReport


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
@click.option(
    "--gather",
    type=click.IntRange(1, 1023),
    default=None,
    metavar="K",
    help="Multi-host publish: wait for K other hosts' files (--contribute-to here) and sign"
    " one version over them and PATH's; needs --version.",
)
@click.option(
    "--listen",
    default="0.0.0.0:7451",
    show_default=True,
    metavar="HOST:PORT",
    help="Where --gather listens for contributors.",
)
@click.option(
    "--contribute-to",
    "contribute_to",
    default=None,
    metavar="HOST:PORT",
    help="Multi-host publish: give PATH's files to the coordinator gathering NAME@VERSION"
    " there, and serve them once it signed; needs --version.",
)
@click.option(
    "--gather-timeout",
    type=click.FloatRange(0, min_open=True),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long --gather waits for its contributors (and --contribute-to for the result).",
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
    gather: int | None,
    listen: str,
    contribute_to: str | None,
    gather_timeout: float,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Publish PATH (a file or a directory) as NAME."""
    from p2pckpt.publish import parse_meta

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
    started = time.monotonic()
    here = None
    if gather is not None or contribute_to is not None:
        if replicas or hf_repo is not None:
            raise ConfigError("--gather and --contribute-to take neither --replicas nor --hf-cache")
        manifest, here = _multi_host(
            home,
            path,
            name,
            version,
            extra,
            expires_at,
            gather,
            listen,
            contribute_to,
            gather_timeout,
        )
    else:
        manifest = _hash_and_sign(home, path, name, version, extra, expires_at)
    seconds = time.monotonic() - started
    doc = _document(manifest, seconds)
    if here is not None:
        doc["files_here"] = here
    if not as_json:
        rate = manifest.total_bytes / seconds / 1e6 if seconds > 0 else 0
        if here is not None:
            say(f"multi-host: {here} of its {len(manifest.files)} file(s) are served from here")
        say(
            f"published {manifest.name}@{manifest.version}: {len(manifest.files)} file(s),"
            f" {manifest.total_bytes / 1e6:.1f} MB, {manifest.chunk_count} chunks"
            f" ({rate:.0f} MB/s)"
        )
    if replicas:
        from p2pckpt.errors import ReplicasMissing

        cfg = load_config(home, config_path)
        try:
            report = _wait_replicas(home, cfg, manifest, replicas, timeout)
        except ReplicasMissing as exc:
            if as_json:
                doc["replicas"] = exc.report.as_json()
                doc["error"] = error_of(exc)
                emit_json(doc)
            raise
        doc["replicas"] = report.as_json()
        if not as_json:
            say(f"safe on {report.describe()}")
    if as_json:
        emit_json(doc)


def _multi_host(
    home: Home,
    path: Path,
    name: str,
    version: int | None,
    meta: dict[str, str],
    expires: int | None,
    gather: int | None,
    listen: str,
    contribute_to: str | None,
    timeout: float,
) -> tuple[Manifest, int]:
    """``--gather K`` (the coordinator) or ``--contribute-to ADDR`` (another
    host): one version over several hosts' files (``transfer/gather_net.py``).
    Returns the signed manifest and how many of its files are here."""
    import trio

    from p2pckpt.config import parse_addr
    from p2pckpt.errors import first_leaf
    from p2pckpt.multihost import net as gather_net
    from p2pckpt.multihost.local import local_entries
    from p2pckpt.publish import _check_args

    if (gather is None) == (contribute_to is None):
        raise ConfigError("give --gather K or --contribute-to HOST:PORT, not both")
    if version is None:
        raise ConfigError("a multi-host publish needs --version (every host names the same)")
    _check_args(name, meta, version, expires)
    root, mine = local_entries(home, path)
    note(f"hashed {len(mine)} file(s) here, {sum(e.size for e in mine) / 1e6:.1f} MB")

    def on_listening(listeners: list[trio.SocketListener]) -> None:
        host, port = listeners[0].socket.getsockname()[:2]
        note(f"gathering {name}@{version} on {host}:{port}: waiting for {gather} host(s)")

    async def main() -> Manifest:
        if contribute_to is not None:
            addr = parse_addr(contribute_to)
            return await gather_net.contribute(home, root, mine, name, version, addr, timeout)
        assert gather is not None
        host, port = parse_addr(listen, allow_zero=True)
        return await gather_net.coordinate(
            home,
            root,
            mine,
            name,
            version,
            gather,
            (host, port),
            timeout,
            meta,
            expires,
            on_listening,
        )

    try:
        return trio.run(main), len(mine)
    except BaseExceptionGroup as group:
        leaf = first_leaf(group)
        if isinstance(leaf, Exception):
            raise leaf from None
        raise


def _hash_and_sign(
    home: Home,
    path: Path,
    name: str,
    version: int | None,
    meta: dict[str, str],
    expires: int | None,
) -> Manifest:
    """``publish.publish``, with a hashing bar on a terminal."""
    from p2pckpt.publish import publish as do_publish

    bar = progress_bar(sys.stderr.isatty())
    if bar is None:
        return do_publish(home, path, name, version, meta, expires=expires)
    tasks: list[TaskID] = []

    def on_total(total: int) -> None:
        tasks.append(bar.add_task(f"hashing {name}", total=total))

    def on_bytes(n: int) -> None:
        if tasks:
            bar.advance(tasks[0], n)

    with bar:
        return do_publish(home, path, name, version, meta, on_bytes, on_total, expires=expires)


def _document(manifest: Manifest, seconds: float) -> dict[str, object]:
    """The --json document (``replicas`` is added once known)."""
    return {
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


def _wait_replicas(
    home: Home, cfg: Config, manifest: Manifest, wanted: int, timeout: float
) -> ReplicaReport:
    """Block until ``wanted`` trusted peers hold the version; progress on stderr."""
    import trio

    from p2pckpt.replicas import wait_for_replicas

    reported: list[str] = []

    def on_change(report: ReplicaReport) -> None:
        # One line per peer: two peers can become holders in the same round.
        for peer in report.holding:
            if peer not in reported:
                reported.append(peer)
                note(
                    f"replica {len(reported)}/{wanted}: {report.label(peer)} holds it"
                    f" ({report.seconds:.1f}s)"
                )

    note(
        f"waiting up to {timeout:.0f}s for {wanted} trusted peer(s) to hold"
        f" {manifest.name}@{manifest.version}"
    )
    return trio.run(wait_for_replicas, home, cfg, manifest, wanted, timeout, on_change)


def _hf_source(
    spec: str, cache_dir: Path | None, name: str | None, meta: dict[str, str]
) -> tuple[Path, str, dict[str, str]]:
    """The snapshot folder, checkpoint name and meta for ``--hf-cache``."""
    from p2pckpt.interop import hfcache

    repo_id, revision = hfcache.parse_repo(spec)
    folder, commit, branch = hfcache.snapshot(
        cache_dir or hfcache.default_cache(), repo_id, revision
    )
    found = {"hf_repo": repo_id, "hf_revision": commit, **hfcache.card_meta(folder)}
    if branch is not None:
        found["hf_ref"] = branch
    return folder, name or repo_id.rpartition("/")[2], {**found, **meta}
