"""``p2pckpt verify PATH [NAME@VERSION]``: check a local copy against its
signed manifest and name every file and chunk that differs.

Without NAME@VERSION the manifest is the one the catalog holds for PATH (a
copy this node pulled or published). Exit 0 only when every byte matches;
9 (integrity, ``CopyDiffers``) when anything differs; 3 (``NotFound``) when
no manifest is known for PATH. A partial copy (a selective pull, issue 19)
is checked against the files of its selection only, and the output says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from p2pckpt.cli.common import command, emit_json, error_of, open_home, parse_ref, say


@command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("ref", metavar="[NAME[@VERSION]]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def verify(path: Path, ref: str | None, as_json: bool) -> None:
    """Check PATH against its signed manifest; name every file and chunk that differs."""
    from p2pckpt.errors import CopyDiffers, NotFound
    from p2pckpt.manifest.paths import safe_display
    from p2pckpt.store.verify import compare

    home = open_home()
    where = path.expanduser().absolute()
    if ref is not None:
        name, version = parse_ref(ref)
        entry = home.catalog.find(name, version)
        if entry is None:
            raise NotFound(f"this node holds no manifest for {ref}")
    else:
        rows = home.catalog.at_location(where)
        if not rows:
            raise NotFound(
                f"{where} is not a copy this node pulled or published;"
                " name the version: p2pckpt verify PATH NAME@VERSION"
            )
        entry = max(rows, key=lambda e: e.version)
    if entry.location != str(where):  # named: the catalogued copy at PATH, if any, says
        here = [e for e in home.catalog.at_location(where) if e.root == entry.root]
        entry = here[0] if here else replace(entry, selection=None)
    manifest = entry.manifest()
    selection = entry.selected
    result = compare(where, manifest, every_chunk=True, selection=selection)
    label = f"{manifest.name}@{manifest.version}"
    files = [f for f in manifest.files if selection is None or f.path in selection]
    checked = sum(f.size for f in files)
    failure = CopyDiffers(f"{where} does not match {label}", reported=as_json) if result else None
    if as_json:
        doc: dict[str, object] = {
            "path": str(where),
            "name": manifest.name,
            "version": manifest.version,
            "ok": not result,
            "missing": result.missing,
            "extra": result.extra,
            "damaged": {p: result.details.get(p, "") for p in result.damaged},
            "partial": selection is not None,
            "files": [f.path for f in files],
            "bytes": checked,
        }
        if failure is not None:
            doc["error"] = error_of(failure)
        emit_json(doc)
    else:
        for p in result.missing:
            click.echo(f"missing: {safe_display(p)}")
        for p in result.extra:
            click.echo(f"extra: {safe_display(p)}")
        for p in result.damaged:
            click.echo(f"damaged: {safe_display(p)}: {result.details.get(p, '')}")
        if not result and selection is None:
            say(f"ok: {where} matches {label} ({checked} bytes verified)")
        elif not result and entry.origin == "published":  # a multi-host share
            say(
                f"ok: {where} matches {label} in part: the {len(files)} of"
                f" its {len(manifest.files)} files this host holds ({checked} bytes verified;"
                " the others are held by the other hosts of this multi-host version)"
            )
        elif not result:
            say(
                f"ok: {where} matches {label} in part: the {len(files)} of"
                f" {len(manifest.files)} files selected ({checked} bytes verified; the"
                " others were not pulled and were not checked)"
            )
    if failure is not None:
        # --json said so already (ok: false, error); the text output ends with the error line
        raise failure
