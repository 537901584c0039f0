"""``p2pckpt push``: have other daemons pull a version from us, and wait.

The command serves the version itself for as long as it runs (a temporary
seeder on ``--listen``), asks each target to pull it back (the target must
grant us the push role, follow the name, and we must let it pull), and
prints each target's verified result. Each target is also told where the
other targets are (those reached directly), so they pull from each other as
well as from us: a swarm, not N copies of our uplink. While targets pull,
each one's progress is shown: a bar per target on a terminal, else a line
per target at most every PROGRESS_LINE_EVERY seconds. Exit 0 only if every target
verified.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import click

from p2pckpt.cli.commands import _config, _parse_ref, _progress_bar, command, config_option
from p2pckpt.cli.main import emit_json, open_home

PUSH_TIMEOUT = 24 * 3600.0  # a target may be pulling a very large checkpoint
PROGRESS_LINE_EVERY = 5.0


class _TargetProgress:
    """One target's progress, as a rich bar or as occasional plain lines."""

    def __init__(self, label: str, bar: Any, quiet: bool) -> None:
        self._label = label
        self._bar = bar
        self._quiet = quiet
        self._task: Any = None
        self._last_line = 0.0

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self._label, total=total)
            self._bar.update(self._task, completed=done, total=total)
        elif not self._quiet and time.monotonic() - self._last_line >= PROGRESS_LINE_EVERY:
            self._last_line = time.monotonic()
            pct = 100 * done // total if total else 100
            click.echo(
                f"{self._label}: pulling {done / 1e6:.1f} of {total / 1e6:.1f} MB ({pct}%)",
                err=True,
            )


@command()
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option(
    "--to",
    "targets",
    multiple=True,
    required=True,
    metavar="ADDR",
    help="Target daemon: HOST:PORT, peer ID or trusted name (repeatable).",
)
@click.option(
    "--listen",
    default="0.0.0.0:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the targets pull from (this command serves while it runs).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object at the end.")
@config_option
def push(
    ref: str, targets: tuple[str, ...], listen: str, as_json: bool, config_path: Path | None
) -> None:
    """Ask daemons to pull NAME[@VERSION] from this node; wait until verified."""
    import trio

    from p2pckpt.config import parse_addr
    from p2pckpt.discovery.finder import open_finder, parse_target
    from p2pckpt.errors import NotFound, P2pckptError, TransferError
    from p2pckpt.manifest.paths import safe_display
    from p2pckpt.transfer.serve import Server
    from p2pckpt.wire import messages as m
    from p2pckpt.wire.messages import MAX_PUSH_PEERS

    home = open_home()
    cfg = _config(home, config_path)
    name, version = _parse_ref(ref)
    entry = home.catalog.find(name, version)
    if entry is None:
        raise NotFound(f"this node holds no {ref}: publish or pull it first")
    parsed = [(t, parse_target(t, home)) for t in targets]
    host, port = parse_addr(listen, allow_zero=True)
    results: dict[str, dict[str, Any]] = {}
    served: list[int] = []  # chunk bytes we uploaded (targets also feed each other)
    bar = _progress_bar(sys.stderr.isatty() and not as_json)

    async def run() -> None:
        server = Server(
            home,
            upload=cfg.upload,
            compress=cfg.compress != "off",
            per_peer=cfg.upload_per_peer,
            on_served=served.append,
        )
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, port)
            bound = listeners[0].socket.getsockname()[1]
            need_mdns = any(not isinstance(t, tuple) for _, t in parsed)
            async with open_finder(home, cfg, use_mdns=need_mdns) as finder:
                conns: dict[str, Any] = {}

                def failed(label: str, message: str) -> None:
                    results[label] = {"ok": False, "message": message, "bytes": 0}
                    if not as_json:
                        click.echo(f"{safe_display(label)}: FAILED: {safe_display(message)}")

                async def reach(label: str, target: Any) -> None:
                    try:
                        conns[label] = await finder.connect_target(target)
                    except P2pckptError as exc:
                        failed(label, str(exc))

                async def one(label: str, conn: Any) -> None:
                    # The other targets, where we reached them: they pull from each other too.
                    peers = tuple(
                        (c.peer.key, *parse_addr(c.addr))
                        for c in conns.values()
                        if c.route == "direct" and c.peer != conn.peer
                    )[:MAX_PUSH_PEERS]
                    try:
                        try:
                            await conn.send(
                                m.PushRequest(entry.name, entry.version, entry.root, bound, peers)
                            )
                            shown = _TargetProgress(safe_display(label), bar, quiet=as_json)
                            while isinstance(
                                reply := await conn.receive(idle_timeout=PUSH_TIMEOUT),
                                m.PushProgress,
                            ):
                                shown.update(reply.done, reply.total)
                        finally:
                            await conn.aclose()
                        if not isinstance(reply, m.PushResult):
                            raise TransferError("unexpected answer to a push")
                    except P2pckptError as exc:
                        failed(label, str(exc))
                        return
                    results[label] = {
                        "ok": reply.ok,
                        "message": reply.message,
                        "bytes": reply.bytes_total,
                    }
                    if not as_json:
                        mark = "ok" if reply.ok else "FAILED"
                        click.echo(f"{safe_display(label)}: {mark}: {safe_display(reply.message)}")

                async with trio.open_nursery() as dials:
                    for label, target in parsed:
                        dials.start_soon(reach, label, target)
                with bar if bar is not None else contextlib.nullcontext():
                    async with trio.open_nursery() as pushes:
                        for label, conn in conns.items():
                            pushes.start_soon(one, label, conn)
            nursery.cancel_scope.cancel()

    trio.run(run)
    ok = all(r["ok"] for r in results.values())
    if as_json:
        emit_json(
            {
                "name": entry.name,
                "version": entry.version,
                "ok": ok,
                "bytes_served": sum(served),
                "targets": results,
            }
        )
    else:
        click.echo(
            f"uploaded {sum(served) / 1e6:.1f} MB for {len(results)} target(s)"
            f" ({sum(served) / max(entry.total_bytes, 1):.2f}x the version)"
        )
    if not ok:
        click.echo(
            f"p2pckpt: error: not every target verified {entry.name}@{entry.version}", err=True
        )
        sys.exit(12)
