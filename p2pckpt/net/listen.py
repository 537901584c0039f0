"""Opening TCP listeners with a clear error (shared by the seeder and the relay)."""

from __future__ import annotations

import errno

import trio

from p2pckpt.errors import ConfigError


async def open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    """Listeners on ``host:port``; a bind failure is one readable ConfigError."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        busy = f" (is another {what} running?)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{busy}") from None
