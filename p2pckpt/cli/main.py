"""The ``p2pckpt`` command: parse arguments, call the library, map errors.

Every ``P2pckptError`` becomes one line on stderr and its exit code; no
traceback for anything a user can cause. ``--home`` is accepted before or
after the command name. Disk full (bytes or inodes, quota, file size, a
read-only filesystem) from anywhere exits 10 (``NoSpace``), the catalog's
SQLITE_FULL too. SIGTERM stops a command as Ctrl-C does (see
``p2pckpt.cli.stopping``): one line on stderr and exit 130.

The commands live in the ``*_cmd`` modules, which register themselves on the
group in ``p2pckpt.cli.common``; importing them here is what adds them.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from typing import NoReturn

import click

from p2pckpt.cli import (  # noqa: F401  (registers the commands)
    catalog_cmd,
    current_cmd,
    daemon_cmd,
    init_cmd,
    ls_cmd,
    pair_cmd,
    pause_cmd,
    publish_cmd,
    pull_cmd,
    push_cmd,
    relay_cmd,
    serve_cmd,
    status_cmd,
    trust_cmd,
    verify_cmd,
)
from p2pckpt.cli.common import cli, emit_json, error_json, json_emitted, json_requested
from p2pckpt.cli.stopping import interrupted, terminate_like_interrupt
from p2pckpt.errors import (
    NO_SPACE_ERRNOS,
    ConfigError,
    Interrupted,
    NoSpace,
    P2pckptError,
    SystemFailure,
)

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point: run the CLI, turning errors into messages and exit codes."""
    signal.signal(signal.SIGTERM, terminate_like_interrupt)
    try:
        _run()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()  # click's own usage message
        kind = "UsageError" if isinstance(exc, click.UsageError) else "ConfigError"
        _json_error(ConfigError.exit_code, kind, exc.format_message())
        sys.exit(ConfigError.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _exit(interrupted())
    except P2pckptError as exc:
        _exit(exc)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            _exit(
                NoSpace(
                    f"not enough disk space: {exc.strerror}{where}; free some"
                    " space and run the same command again"
                )
            )
        _exit(SystemFailure(exc.strerror or str(exc)))
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        _exit(
            NoSpace(
                f"the catalog cannot grow ({exc}); free some space and run the same command again"
            )
        )


def _exit(exc: P2pckptError) -> NoReturn:
    """One line on stderr (unless the command showed it already), then its exit
    code; under ``--json``, also ``{"error": {...}}`` on stdout."""
    if not exc.reported:
        kind = "" if isinstance(exc, Interrupted) else "error: "
        click.echo(f"p2pckpt: {kind}{exc}", err=True)
    _json_error(exc.exit_code, type(exc).__name__, str(exc))
    sys.exit(exc.exit_code)


def _json_error(code: int, kind: str, message: str) -> None:
    """Under ``--json``, a failure prints one JSON object on stdout,
    ``{"error": {"code", "kind", "message"}}``, unless the command printed its
    document already (with its own ``error`` key: see docs/json.md)."""
    if json_requested(sys.argv[1:]) and not json_emitted():
        emit_json({"error": error_json(code, kind, message)})


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
