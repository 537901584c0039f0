"""The ``p2pckpt`` command: parse arguments, call the library, map errors.

Every ``P2pckptError`` becomes one line on stderr and its exit code; no
traceback for anything a user can cause. ``--home`` is accepted before or
after the command name.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from p2pckpt.errors import ConfigError, P2pckptError

EXIT_INTERRUPTED = 130


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

    try:
        _run()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("p2pckpt: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except P2pckptError as exc:
        click.echo(f"p2pckpt: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("p2pckpt: interrupted; run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        click.echo(f"p2pckpt: error: {exc.strerror or exc}", err=True)
        sys.exit(1)


def _run() -> None:
    """Run click; errors out of nurseries arrive grouped, so unwrap ours."""
    try:
        cli.main(standalone_mode=False)
    except BaseExceptionGroup as group:
        ours = group.subgroup(lambda e: isinstance(e, P2pckptError | KeyboardInterrupt | OSError))
        if ours is None:
            raise
        leaf: BaseException = ours
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from group


def fail(message: str) -> None:
    raise ConfigError(message)
