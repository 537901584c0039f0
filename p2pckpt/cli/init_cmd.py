"""``p2pckpt init`` and ``p2pckpt id``: create this node's home, show its peer ID."""

from __future__ import annotations

import sys

import click

from p2pckpt.cli.common import command, home_path, note, open_home
from p2pckpt.errors import ConfigError


@command()
@click.option(
    "--force",
    is_flag=True,
    help="Rotate this node's identity: a new key and peer ID (asks first). The trust store"
    " and catalog are kept; peers must trust the new ID.",
)
@click.option("--yes", is_flag=True, help="With --force: do not ask.")
def init(force: bool, yes: bool) -> None:
    """Create this node's key, trust store and catalog (idempotent)."""
    from p2pckpt.home import Home
    from p2pckpt.identity.keys import KEY_FILE

    path = home_path().expanduser().absolute()
    old = None
    if force and (path / KEY_FILE).exists():
        old = str(open_home().key.peer_id)
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"init --force replaces this node's key ({old}) with a new one: every"
                    " peer will have to trust the new ID. Add --yes to confirm"
                )
            click.confirm(
                f"Replace this node's key ({old})? Peers will have to trust the new ID",
                abort=True,
                err=True,
            )
    home, created = Home.init(path, force=force)
    if old is not None:
        note(
            f"new identity for {home.path} (was {old}); trust store and catalog kept."
            f" On each peer: p2pckpt trust add {home.key.peer_id} (with the roles it had),"
            f" then p2pckpt trust rm {old}; restart a running serve or daemon"
        )
    else:
        note(f"{'created' if created else 'already initialised'}: {home.path}")
    click.echo(str(home.key.peer_id))


@command(name="id")
def show_id() -> None:
    """Print this node's peer ID."""
    click.echo(str(open_home().key.peer_id))
