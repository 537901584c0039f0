"""``p2pckpt relay``: run a relay in the foreground until SIGTERM/Ctrl-C."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import Size, command
from p2pckpt.cli.stopping import run_until_signalled
from p2pckpt.errors import ConfigError

if TYPE_CHECKING:
    import trio


@command()
@click.option("--listen", default="0.0.0.0:7451", show_default=True, metavar="HOST:PORT")
@click.option(
    "--bandwidth",
    type=Size(low=0),
    default=None,
    metavar="RATE",
    help="per-session cap, bytes/s (10M = 10 MB/s, 10MiB = 10 MiB/s)",
)
@click.option(
    "--session-bytes",
    type=Size(low=0),
    metavar="SIZE",
    default=None,
    help="per-session cap on bytes relayed; a pull reconnects over a new session",
)
def relay(listen: str, bandwidth: int | None, session_bytes: int | None) -> None:
    """Relay end-to-end encrypted sessions to nodes that cannot be dialled directly.

    The relay needs no home or key: it only pipes ciphertext between nodes
    that proved their keys and clients that ask for them.
    """
    from p2pckpt.config import parse_addr
    from p2pckpt.relay.server import RelayServer

    host, port = parse_addr(listen, allow_zero=True)
    if bandwidth is not None and bandwidth < 1:
        raise ConfigError("--bandwidth must be a positive number of bytes per second")
    if session_bytes is not None and session_bytes < 1:
        raise ConfigError("--session-bytes must be a positive number of bytes")

    async def start(nursery: trio.Nursery) -> None:
        server = RelayServer(bandwidth=bandwidth, session_bytes=session_bytes)
        listeners = await nursery.start(server.serve, host, port)
        for lst in listeners:
            addr = lst.socket.getsockname()
            click.echo(f"relay listening on {addr[0]}:{addr[1]}")
        sys.stdout.flush()

    run_until_signalled(start, "p2pckpt.relay")
