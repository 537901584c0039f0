"""``p2pckpt init`` and ``p2pckpt id``: create this node's home, show its peer ID."""

from __future__ import annotations

import click

from p2pckpt.cli.common import command, home_path, open_home


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
