"""``p2pckpt daemon``: the always-on node (see p2pckpt/daemon/app.py)."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import command, config_option, open_home, serving_config
from p2pckpt.cli.stopping import run_until_signalled

if TYPE_CHECKING:
    import trio


@command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override [serve] listen.")
@click.option("--no-mdns", is_flag=True, help="Neither announce nor look on the LAN (mDNS).")
@click.option("--relay", default=None, metavar="HOST:PORT", help="Be reachable through a relay.")
def daemon(config_path: Path | None, listen: str | None, no_mdns: bool, relay: str | None) -> None:
    """Run the daemon: serve, announce, watch, follow, status; until SIGTERM."""
    from p2pckpt.daemon.app import run_daemon

    home = open_home()
    cfg = serving_config(home, config_path, listen, no_mdns, relay)

    def on_web(url: str, token: str) -> None:
        # The token opens the page's API: shown only on a terminal, never
        # in a log or a journal; otherwise where to find it.
        if sys.stdout.isatty():
            click.echo(f"web page: {url}#token={token}")
        else:
            click.echo(f"web page: {url} (open {url}#token=TOKEN, TOKEN in {home.path}/web-token)")

    async def start(nursery: trio.Nursery) -> None:
        addrs = await nursery.start(partial(run_daemon, on_web=on_web), home, cfg)
        click.echo(f"daemon listening on {', '.join(addrs)}")
        relay = f"{cfg.relay[0]}:{cfg.relay[1]}" if cfg.relay else "none"
        logging.getLogger("p2pckpt.daemon").info(
            "node peer_id=%s mdns=%s relay=%s", home.key.peer_id, "on" if cfg.mdns else "off", relay
        )

    run_until_signalled(start, "p2pckpt.daemon")
