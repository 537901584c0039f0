"""``p2pckpt daemon``: the always-on node (see p2pckpt/daemon/app.py)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import click

from p2pckpt.cli.commands import command, config_option
from p2pckpt.cli.main import open_home


@command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT", help="Override [serve] listen.")
def daemon(config_path: Path | None, listen: str | None) -> None:
    """Run the daemon: serve, announce, watch, follow, status; until SIGTERM."""
    import trio

    from p2pckpt.config import load
    from p2pckpt.daemon.app import run_daemon

    home = open_home()
    cfg = load(home.path, config_path).with_flags(listen=listen)
    logging.getLogger("p2pckpt").setLevel(min(logging.getLogger().level, logging.INFO))
    log = logging.getLogger("p2pckpt.daemon")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(run_daemon, home, cfg)
            click.echo(f"daemon listening on {', '.join(addrs)}")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
