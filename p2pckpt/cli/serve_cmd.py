"""``p2pckpt serve``: serve this node's checkpoints in the foreground (no
watching, following or status socket: that is ``p2pckpt daemon``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import command, config_option, note, open_home, serving_config
from p2pckpt.cli.stopping import run_until_signalled

if TYPE_CHECKING:
    import trio


@command()
@click.option("--listen", default=None, metavar="HOST:PORT", help="Default 0.0.0.0:7450.")
@click.option("--no-mdns", is_flag=True, help="Do not announce on the LAN (mDNS).")
@click.option("--relay", default=None, metavar="HOST:PORT", help="Be reachable through a relay.")
@config_option
def serve(listen: str | None, no_mdns: bool, relay: str | None, config_path: Path | None) -> None:
    """Serve this node's checkpoints in the foreground until SIGTERM/Ctrl-C."""
    from p2pckpt.config import parse_addr
    from p2pckpt.daemon.app import start_reachability
    from p2pckpt.transfer.serve import Server

    home = open_home()
    cfg = serving_config(home, config_path, listen, no_mdns, relay)
    host, port = parse_addr(cfg.listen, allow_zero=True)

    async def start(nursery: trio.Nursery) -> None:
        server = Server.configured(home, cfg)
        listeners = await nursery.start(server.serve, host, port)
        for lst in listeners:
            addr = lst.socket.getsockname()
            click.echo(f"listening on {addr[0]}:{addr[1]}")
        sys.stdout.flush()
        await start_reachability(nursery, home, cfg, server, listeners)
        held = len(home.catalog.summaries())
        trusted = sum(1 for p in home.trust if "pull" in p.roles)
        note(
            f"peer ID {home.key.peer_id}; serving {held} version(s) to"
            f" {trusted} peer(s) with the pull role"
            + (" (announced on the LAN)" if cfg.mdns else "")
            + (f" (reachable through relay {cfg.relay[0]}:{cfg.relay[1]})" if cfg.relay else "")
        )
        if not trusted:
            click.echo(
                "warning: no peer may pull from us yet: 'p2pckpt trust add PEER_ID'", err=True
            )

    run_until_signalled(start, "p2pckpt.serve")
