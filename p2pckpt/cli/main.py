"""The ``p2pckpt`` command: parse arguments, call the library, map errors.

Every ``P2pckptError`` becomes one line on stderr and its exit code; no
traceback for anything a user can cause. ``--home`` is accepted before or
after the command name. Disk full (bytes or inodes, quota, file size, a
read-only filesystem) from anywhere exits 10, the catalog's SQLITE_FULL too.
SIGTERM stops a command as Ctrl-C does, with one line on stderr and exit
130: a pull (``run_stoppable``) is cancelled cleanly, its journal and the
chunks written flushed so the next run resumes; ``serve``, ``daemon`` and
``relay`` handle SIGTERM themselves once running.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from p2pckpt.errors import NO_SPACE_ERRNOS, ConfigError, P2pckptError

EXIT_INTERRUPTED = 130
EXIT_NO_SPACE = 10
T = TypeVar("T")
_stopped_by = "Ctrl-C"


class Stopped(Exception):
    """A command was stopped by a signal after a clean shutdown (exit 130)."""


def run_stoppable(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``, where SIGTERM (systemd, ``docker stop``, ``kill``)
    cancels ``fn`` and raises Stopped once it has unwound: every ``finally``
    runs, so a pull closes its staging area (journal and written chunks
    flushed) and its connections, as the daemon does on SIGTERM."""
    import trio

    async def main() -> T:
        global _stopped_by
        results: list[T] = []
        stopped = False

        async def body(scope: trio.CancelScope) -> None:
            results.append(await fn())
            scope.cancel()

        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                nursery.start_soon(body, nursery.cancel_scope)
                async for signum in signals:
                    _stopped_by, stopped = signal.Signals(signum).name, True
                    nursery.cancel_scope.cancel()
                    break
        if stopped and not results:
            raise Stopped
        return results[0]

    return trio.run(main)


def _terminate_like_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside ``run_stoppable``: do what SIGINT's handler does now
    (inside ``trio.run`` that is trio's, which interrupts at a safe point)."""
    global _stopped_by
    _stopped_by = signal.Signals(signum).name
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    if not _in_trio():  # SIGINT ignored (a background job): stop all the same
        raise KeyboardInterrupt
    # SIGINT ignored and trio running: trio has no safe point to offer, so end
    # as SIGTERM always did rather than raise inside its run loop.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _in_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _interrupted() -> None:
    how = "" if _stopped_by == "Ctrl-C" else f" ({_stopped_by})"
    click.echo(f"p2pckpt: interrupted{how}; run the same command again to resume", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _set_home(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["home"] = Path(value)


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    expose_value=False,
    callback=_set_home,
    is_eager=True,
    help="Node home directory (default: $P2PCKPT_HOME or the user data dir).",
)


def home_path() -> Path:
    from p2pckpt.home import default_home

    ctx: click.Context | None = click.get_current_context()
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "home" in ctx.obj:
            return Path(ctx.obj["home"])
        ctx = ctx.parent
    return default_home()


def open_home() -> Any:
    from p2pckpt.home import Home

    return Home.open(home_path())


def emit_json(doc: object) -> None:
    click.echo(json.dumps(doc, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@home_option
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="P2PCKPT_LOG_FORMAT",
    help="Log lines on stderr: text, or one JSON object per line.",
)
@click.version_option(package_name="p2pckpt")
def cli(verbose: int, log_format: str) -> None:
    """Peer-to-peer, end-to-end encrypted transfer of AI model checkpoints."""
    from p2pckpt.logs import setup

    setup(logging.WARNING - 10 * min(verbose, 2), log_format)


def main() -> None:
    """Entry point: run the CLI, turning errors into messages and exit codes."""
    from p2pckpt.cli import (  # noqa: F401  (registers the commands)
        commands,
        daemon_cmd,
        push_cmd,
        relay_cmd,
        status_cmd,
        verify_cmd,
    )

    signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    try:
        _run()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        _interrupted()
    except P2pckptError as exc:
        click.echo(f"p2pckpt: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Stopped):
        _interrupted()
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(
                f"p2pckpt: error: not enough disk space: {exc.strerror}{where}; free some"
                " space and run the same command again",
                err=True,
            )
            sys.exit(EXIT_NO_SPACE)
        click.echo(f"p2pckpt: error: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        click.echo(
            f"p2pckpt: error: the catalog cannot grow ({exc}); free some space and run the"
            " same command again",
            err=True,
        )
        sys.exit(EXIT_NO_SPACE)


def _run() -> None:
    """Run click; errors out of nurseries arrive grouped, so unwrap ours."""
    try:
        cli.main(standalone_mode=False)
    except BaseExceptionGroup as group:
        # An interruption wins over what the tasks it cancelled raised on the way out.
        ours = group.subgroup(KeyboardInterrupt) or group.subgroup(
            lambda e: isinstance(e, P2pckptError | OSError | sqlite3.Error)
        )
        if ours is None:
            raise
        leaf: BaseException = ours
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from group


def fail(message: str) -> None:
    raise ConfigError(message)
