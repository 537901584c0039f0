"""``p2pckpt ls``: the versions held here and those reachable trusted peers offer.

``ls NAME[@VERSION] --files`` looks inside one version (issue 19): its files
and their sizes, from the catalog here, or (when this node does not hold it,
or with ``--peer``) from the signed manifest a peer sends, checked as a
pull checks it (publisher trusted, no rollback) but not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import (
    command,
    config_option,
    emit_json,
    human,
    load_config,
    note,
    open_home,
    parse_ref,
    relay_flag,
    relay_option,
)

if TYPE_CHECKING:
    from p2pckpt.config import Config
    from p2pckpt.home import Home
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.manifest.manifest import Manifest
    from p2pckpt.store.catalog import Entry
    from p2pckpt.transfer.peer import PeerConnection
    from p2pckpt.wire.messages import VersionInfo


@command(name="ls")
@click.argument("ref", metavar="[NAME[@VERSION]]", required=False)
@click.option(
    "--peer",
    "--from",
    "peers",
    multiple=True,
    metavar="ADDR",
    help="Only this peer (HOST:PORT, ID or name).",
)
@click.option("--local", is_flag=True, help="Only what this node holds; ask no peer.")
@click.option("--files", is_flag=True, help="The files of NAME[@VERSION] and their sizes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
@relay_option
def ls(
    ref: str | None,
    peers: tuple[str, ...],
    local: bool,
    files: bool,
    as_json: bool,
    config_path: Path | None,
    relay: str | None,
) -> None:
    """List versions held here and offered by reachable trusted peers
    (of NAME, or NAME@VERSION, if given); with --files, one version's files."""
    from p2pckpt.errors import ConfigError

    home = open_home()
    if files:
        if ref is None:
            raise ConfigError("--files needs NAME[@VERSION]")
        _ls_files(home, ref, peers, local, as_json, config_path, relay)
        return
    if peers and local:
        raise ConfigError("give --peer or --local, not both")
    wanted = parse_ref(ref) if ref is not None else None
    who = _namer(home)
    rows: list[_Row] = []
    if not peers:
        metas = home.catalog.metas()
        rows += [_local(e, metas.get(e.root, {}), who) for e in home.catalog.summaries()]
    if not local:
        remote = _remote_versions(home, load_config(home, config_path, **relay_flag(relay)), peers)
        rows += [_offered(*offer, who) for offer in remote]
    if wanted is not None:
        name, version = wanted
        rows = [
            r
            for r in rows
            if r.doc["name"] == name and (version is None or r.doc["version"] == version)
        ]
    if as_json:
        emit_json([r.doc for r in rows])
        return
    if not rows:
        note("no checkpoints")
        return
    _print_table(rows)


_LS_COLUMNS = ("VERSION", "SIZE", "FILES", "FORMAT", "STEP", "BASE MODEL", "LICENSE", "BY")
_LISTED = ("format", "step", "base_model", "license")


@dataclass(frozen=True)
class _Row:
    """One version: its --json object, and its cells in the table."""

    doc: dict[str, object]
    cells: list[str]  # _LS_COLUMNS
    where: str  # the last column, WHERE


def _namer(home: Home) -> Callable[[bytes], str]:
    """Who a key is, for people: "self", a trusted peer's name, or a short ID."""
    from p2pckpt.identity.peer_id import PeerId

    def who(key: bytes) -> str:
        pid = PeerId(key)
        if pid == home.key.peer_id:
            return "self"
        known = home.trust.get(pid)
        return known.name if known is not None and known.name else pid.short

    return who


def _cells(
    name: str, version: int, size: int, files: int, meta: Mapping[str, str], by: str
) -> list[str]:
    listed = (meta.get(key) or "-" for key in _LISTED)
    return [f"{name}@{version}", human(size), str(files), *listed, by]


def _extra(meta: Mapping[str, str]) -> str:
    """Meta beyond the table's columns, for the WHERE column (types record left out)."""
    from p2pckpt.manifest.manifest import TYPES_KEY

    extra = sorted((k, v) for k, v in meta.items() if k not in _LISTED and k != TYPES_KEY)
    return ("  " + " ".join(f"{k}={v}" for k, v in extra)) if extra else ""


def _local(e: Entry, meta: dict[str, str], who: Callable[[bytes], str]) -> _Row:
    """A version this node holds."""
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.manifest.manifest import decode_meta

    doc: dict[str, object] = {
        "name": e.name,
        "version": e.version,
        "publisher": str(PeerId(e.publisher)),
        "publisher_name": who(e.publisher),
        "bytes": e.total_bytes,
        "files": e.file_count,
        "where": "local",
        "origin": e.origin,
        "location": e.location,
        "meta": decode_meta(meta),
        "partial": e.selection is not None,
    }
    where = f"{e.origin}: {e.location}"
    if e.selection is not None:  # a selective pull: only some files are here
        where = f"{e.origin} (partial: {len(e.selected or ())} of {e.file_count} files):" + (
            f" {e.location}"
        )
    where += _extra(meta)
    by = who(e.publisher)
    return _Row(doc, _cells(e.name, e.version, e.total_bytes, e.file_count, meta, by), where)


def _offered(
    peer: PeerId,
    route: str,
    v: VersionInfo,
    signed: Mapping[str, str] | None,
    peer_release: str,
    who: Callable[[bytes], str],
) -> _Row:
    """A version a peer offers (``signed``: its manifest's whole meta, when
    fetched; ``peer_release``: what the peer said it runs, "0.1.0" if it
    said nothing)."""
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.manifest.manifest import decode_meta
    from p2pckpt.wire.features import release

    meta = dict(signed) if signed is not None else dict(v.meta)
    doc: dict[str, object] = {
        "name": v.name,
        "version": v.version,
        "publisher": str(PeerId(v.publisher)),
        "publisher_name": who(v.publisher),
        "bytes": v.total_bytes,
        "files": v.file_count,
        "where": str(peer),
        "where_name": who(peer.key),
        "route": route,
        "peer_release": peer_release,
        "meta": decode_meta(meta),
    }
    other = "" if peer_release == release() else f"; release {peer_release}"  # a mixed fleet
    where = f"offered by {who(peer.key)} ({route}{other})" + _extra(meta)
    by = who(v.publisher)
    return _Row(doc, _cells(v.name, v.version, v.total_bytes, v.file_count, meta, by), where)


def _print_table(rows: list[_Row]) -> None:
    """One line per version under a header; every peer-given string escaped (R-41)."""
    from p2pckpt.manifest.paths import safe_display

    table = [[*_LS_COLUMNS, "WHERE"]]
    table += [[safe_display(c) for c in [*r.cells, r.where]] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_LS_COLUMNS))]
    right = {1, 2}  # sizes and counts line up on the right
    for line in table:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=False))
        ]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


# (peer, route, version, its signed meta if fetched, the peer's release)
Offered = tuple["PeerId", str, "VersionInfo", "Mapping[str, str] | None", str]
MAX_SIGNED_META = 256  # manifests fetched from one --peer for their whole meta


async def _signed_meta(
    conn: PeerConnection, versions: list[VersionInfo]
) -> dict[bytes, Mapping[str, str]]:
    """Each version's whole meta, from its signed manifest (the listing carries
    only the table's keys). A manifest that does not verify or is not the one
    listed is left out; the first failure ends the asking (the rest keep their
    listed meta)."""
    from p2pckpt.errors import P2pckptError
    from p2pckpt.manifest.manifest import verify
    from p2pckpt.wire import messages as m

    out: dict[bytes, Mapping[str, str]] = {}
    for v in versions[:MAX_SIGNED_META]:
        try:
            reply = await conn.request(m.ManifestRequest(v.name, v.version))
            if not isinstance(reply, m.ManifestResponse):
                break
            manifest = verify(reply.envelope)
        except P2pckptError:
            break
        if manifest.root == v.root:
            out[v.root] = manifest.meta
    return out


def _remote_versions(home: Home, cfg: Config, peers: tuple[str, ...]) -> list[Offered]:
    """(peer, route, VersionInfo, signed meta) for every version the given (or
    found) peers offer; with ``--peer``, the whole meta of each version's
    signed manifest (one more round trip per version, up to MAX_SIGNED_META).

    With explicit peers, failures are errors; when discovering, an unreachable
    peer is only reported on stderr, since local versions are still worth listing.
    """
    import trio

    from p2pckpt.discovery.finder import connect_targets, parse_targets
    from p2pckpt.errors import DiscoveryError, P2pckptError
    from p2pckpt.transfer.pull import list_remote

    targets = parse_targets(peers, home)

    async def run() -> list[Offered]:
        try:
            conns = await connect_targets(home, cfg, targets)
        except DiscoveryError:
            raise  # discovery itself could not start (exit 4), as before
        except P2pckptError as exc:
            if targets is not None:
                raise
            click.echo(f"(no peers listed: {exc})", err=True)
            return []
        out: list[Offered] = []
        for conn in conns:
            try:
                listed = await list_remote(conn)
                signed = await _signed_meta(conn, listed) if targets is not None else {}
                out += [
                    (conn.peer, conn.route, v, signed.get(v.root), conn.release) for v in listed
                ]
            finally:
                await conn.aclose()
        return out

    return trio.run(run)


def _ls_files(
    home: Home,
    ref: str,
    peers: tuple[str, ...],
    local: bool,
    as_json: bool,
    config_path: Path | None,
    relay: str | None = None,
) -> None:
    """The files of one version and their sizes: from the catalog here
    (unless ``peers`` are named), else from the first peer that offers it."""
    from p2pckpt.errors import ConfigError, NotFound
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.manifest.paths import safe_display

    if peers and local:
        raise ConfigError("give --peer or --local, not both")
    name, version = parse_ref(ref)
    entry = None if peers else home.catalog.find(name, version)
    elsewhere = "  (not pulled here)"
    if entry is not None:
        manifest, where = entry.manifest(), "local"
        held = entry.selected
        if entry.origin == "published":  # a multi-host share: the rest is on other hosts
            elsewhere = "  (on another host)"
    elif local:
        raise NotFound(f"this node holds no {ref}")
    else:
        cfg = load_config(home, config_path, **relay_flag(relay))
        manifest, peer = _remote_manifest(home, cfg, peers, ref)
        where, held = str(peer), None
    doc: dict[str, object] = {
        "name": manifest.name,
        "version": manifest.version,
        "publisher": str(manifest.publisher),
        "publisher_name": _namer(home)(manifest.publisher.key),
        "where": where,
        "bytes": manifest.total_bytes,
        "files": [
            {"path": f.path, "size": f.size, **({} if held is None else {"here": f.path in held})}
            for f in manifest.files
        ],
    }
    if as_json:
        emit_json(doc)
        return
    whence = "this node" if where == "local" else PeerId.parse(where).short
    click.echo(
        f"{manifest.name}@{manifest.version}: {len(manifest.files)} file(s),"
        f" {human(manifest.total_bytes)} (from {whence})"
    )
    width = max(len(str(f.size)) for f in manifest.files)
    for f in manifest.files:
        mark = "" if held is None else ("  " if f.path in held else elsewhere)
        click.echo(f"{str(f.size).rjust(width)}  {safe_display(f.path)}{mark}")


def _remote_manifest(
    home: Home, cfg: Config, peers: tuple[str, ...], ref: str
) -> tuple[Manifest, PeerId]:
    """The newest (or named) version's signed manifest from the given (or
    found) peers, checked as for a pull, not recorded as seen."""
    import trio

    from p2pckpt.discovery.finder import connect_targets, parse_targets
    from p2pckpt.transfer.choose import Accept, choose_source

    name, version = parse_ref(ref)
    targets = parse_targets(peers, home)

    async def run() -> tuple[Manifest, PeerId]:
        conns = await connect_targets(home, cfg, targets)
        offer = await choose_source(home, conns, name, version, Accept(), note=False)
        try:
            return offer.manifest, offer.sources[0].peer
        finally:
            await offer.aclose()

    return trio.run(run)
