"""``p2pckpt unpublish NAME@VERSION`` and ``p2pckpt gc``: take versions out
of what this node offers, without touching a file.

Both only change the catalog; a running ``serve`` or daemon notices through
the catalog epoch (lists and manifests read the catalog at each request,
cached chunk tables are dropped within a second, mDNS re-announces the
epoch), so peers stop seeing the version without a restart.
"""

from __future__ import annotations

import click

from p2pckpt.cli.common import command, emit_json, open_home, parse_ref


@command()
@click.argument("ref", metavar="NAME@VERSION")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def unpublish(ref: str, as_json: bool) -> None:
    """Stop offering NAME@VERSION (its files are left where they are)."""
    from p2pckpt.errors import ConfigError, NotFound
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.manifest.paths import safe_display

    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"unpublish needs an exact version: {ref}@VERSION")
    home = open_home()
    rows = home.catalog.unpublish(name, version)
    if not rows:
        raise NotFound(f"this node holds no {safe_display(name)}@{version} (see 'p2pckpt ls')")
    if as_json:
        emit_json(
            {
                "name": name,
                "version": version,
                "unpublished": [
                    {
                        "location": e.location,
                        "origin": e.origin,
                        "publisher": str(PeerId(e.publisher)),
                    }
                    for e in rows
                ],
            }
        )
        return
    for e in rows:
        click.echo(
            f"unpublished {safe_display(name)}@{version} (files left at {safe_display(e.location)})"
        )


@command()
@click.option("--dry-run", is_flag=True, help="Only report what would be forgotten.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def gc(dry_run: bool, as_json: bool) -> None:
    """Forget catalog rows whose bytes are gone or changed (never deletes a file)."""
    from p2pckpt.manifest.paths import safe_display
    from p2pckpt.store.gc import collect

    home = open_home()
    report = collect(home.catalog, dry_run=dry_run)
    if as_json:
        emit_json(
            {
                "checked": report.checked,
                "forgotten": len(report.forgotten),
                "dry_run": dry_run,
                "copies": [b.as_json() for b in report.bad],
            }
        )
        return
    verb = "would forget" if dry_run else "forgot"
    done = "would be forgotten" if dry_run else "forgotten"
    click.echo(f"{report.checked} versions checked, {len(report.forgotten)} {done}")
    for b in report.bad:
        what = f"{safe_display(b.name)}@{b.version}"
        if not b.whole:
            what = f"a copy of {what} (another copy is kept)"
        click.echo(f"  {verb} {what}: {b.reason} {safe_display(b.path)}")
