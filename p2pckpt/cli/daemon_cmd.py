"""``p2pckpt daemon``: the always-on node (see p2pckpt/daemon/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import command, config_option, load_config, open_home
from p2pckpt.cli.stopping import run_until_signalled

if TYPE_CHECKING:
    import trio


@command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override [serve] listen.")
def daemon(config_path: Path | None, listen: str | None) -> None:
    """Run the daemon: serve, announce, watch, follow, status; until SIGTERM."""
    from p2pckpt.daemon.app import run_daemon

    home = open_home()
    cfg = load_config(home, config_path, listen=listen)

    async def start(nursery: trio.Nursery) -> None:
        addrs = await nursery.start(run_daemon, home, cfg)
        click.echo(f"daemon listening on {', '.join(addrs)}")

    run_until_signalled(start, "p2pckpt.daemon")
