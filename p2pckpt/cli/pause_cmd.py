"""``p2pckpt pause NAME`` / ``p2pckpt resume NAME``: hold a followed name's
pulls in the running daemon, and let them go again.

A pause stops a running pull between chunks (the chunks verified so far are
kept; the pull after ``resume`` fetches only the rest) and keeps the follow
from checking for new versions; it lasts until ``resume`` or the daemon's
end. Needs a running daemon (exit 11 otherwise); exit 3 for a name it
neither follows nor pulls for the web page.
"""

from __future__ import annotations

from collections.abc import Mapping

import click

from p2pckpt.cli.common import command, emit_json, home_path


def _run(name: str, action: str, as_json: bool) -> None:
    import trio

    from p2pckpt.daemon.control import request
    from p2pckpt.manifest.paths import safe_display

    doc = trio.run(lambda: request(home_path(), "pause", name=name, action=action))
    doc = doc if isinstance(doc, Mapping) else {}
    if as_json:
        emit_json(doc)
        return
    state = "paused" if doc.get("paused") else "running"
    note = "" if doc.get("changed") else " (it already was)"
    click.echo(safe_display(f"{doc.get('name', name)}: {state}{note}"))


@command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def pause(name: str, as_json: bool) -> None:
    """Pause the daemon's pulls of NAME (verified chunks are kept) until 'resume'."""
    _run(name, "pause", as_json)


@command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def resume(name: str, as_json: bool) -> None:
    """Let the daemon pull NAME again; a paused pull goes on where it stopped."""
    _run(name, "resume", as_json)
