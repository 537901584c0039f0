"""What every command shares: the ``p2pckpt`` click group, ``--home`` and
``--config``, opening the home and its config, and output helpers.

Command modules import this (never each other, never ``main``); ``main``
imports the command modules to register them on ``cli``. Heavy modules
(trio, rich, the home's crypto and catalog) are imported only when a command
runs, so ``p2pckpt --help`` starts fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.errors import ConfigError
from p2pckpt.wire.features import FEATURES, PROTOCOL

if TYPE_CHECKING:
    from rich.progress import Progress

    from p2pckpt.config import Config
    from p2pckpt.home import Home


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


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["quiet"] = True


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_set_quiet,
    help="No progress or informational output: only errors, warnings and what was asked for"
    " (a listing, an ID, the --json document).",
)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file laid over HOME/config.toml: keys it sets win, the rest come from"
    " the home's ([[follow]], [[watch]], [[peer]] arrays are replaced whole).",
)

relay_option = click.option(
    "--relay",
    default=None,
    metavar="HOST:PORT",
    help="Reach peers through this relay too (overrides [relay] addr).",
)


def relay_flag(relay: str | None) -> dict[str, object]:
    """``--relay`` as a ``load_config`` flag."""
    if relay is None:
        return {}
    from p2pckpt.config import parse_addr

    return {"relay": parse_addr(relay)}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@home_option
@quiet_option
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="P2PCKPT_LOG_FORMAT",
    help="Log lines on stderr: text, or one JSON object per line.",
)
@click.version_option(
    package_name="p2pckpt",
    message=f"%(prog)s %(version)s (protocol {PROTOCOL}; features: {', '.join(sorted(FEATURES))})",
)
def cli(verbose: int, log_format: str) -> None:
    """Peer-to-peer, end-to-end encrypted transfer of AI model checkpoints."""
    from p2pckpt.logs import setup

    setup(logging.WARNING - 10 * min(verbose, 2), log_format)


def command(
    group: click.Group = cli, name: str | None = None
) -> Callable[[Callable[..., None]], click.Command]:
    """A subcommand of ``group`` that also accepts ``--home`` and ``--quiet``
    after its name."""

    def wrap(fn: Callable[..., None]) -> click.Command:
        return group.command(name=name)(home_option(quiet_option(fn)))

    return wrap


def _obj(key: str) -> object:
    ctx: click.Context | None = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and key in ctx.obj:
            return ctx.obj[key]
        ctx = ctx.parent
    return None


def quiet() -> bool:
    """``--quiet`` (``-q``) given, before or after the command name."""
    return bool(_obj("quiet"))


def note(message: str) -> None:
    """Informational output on stderr (progress, what is happening): not with --quiet."""
    if not quiet():
        click.echo(message, err=True)


def say(message: str) -> None:
    """A success summary on stdout (``pulled ...``): not with --quiet."""
    if not quiet():
        click.echo(message)


def home_path() -> Path:
    """The ``--home`` given (before or after the command name), else the default."""
    from p2pckpt.home import default_home

    ctx: click.Context | None = click.get_current_context()
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "home" in ctx.obj:
            return Path(ctx.obj["home"])
        ctx = ctx.parent
    return default_home()


def open_home() -> Home:
    from p2pckpt.home import Home

    return Home.open(home_path())


def load_config(home: Home, config_path: Path | None, **flags: object) -> Config:
    """The home's config, ``--config`` over it, command-line flags on top."""
    from p2pckpt.config import load

    return load(home.path, config_path).with_flags(**flags)


def serving_config(
    home: Home, config_path: Path | None, listen: str | None, no_mdns: bool, relay: str | None
) -> Config:
    """``load_config`` for a serving node (``serve``, ``daemon``): its
    ``--listen``, ``--no-mdns`` and ``--relay`` on top."""
    from p2pckpt.config import parse_addr

    return load_config(
        home,
        config_path,
        listen=listen,
        mdns=False if no_mdns else None,
        relay=parse_addr(relay) if relay else None,
    )


class Size(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """A byte count or rate: ``1500``, ``10M`` (10,000,000), ``10MiB`` (10,485,760)."""

    name = "size"

    def __init__(self, low: int = 1) -> None:
        self.low = low

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            number = value
        else:
            from p2pckpt.config import parse_size

            try:
                number = parse_size(str(value))
            except ConfigError as exc:
                self.fail(str(exc), param, ctx)
        if number < self.low:
            self.fail(f"{value!r} is less than {self.low} byte(s)", param, ctx)
        return number


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit():
        raise ConfigError(f"bad version in {ref!r}: use NAME@NUMBER")
    return name, int(version)


_emitted: list[object] = []  # the --json document printed, if any (one per run)


def emit_json(doc: object) -> None:
    """The command's one ``--json`` document on stdout (see docs/json.md)."""
    _emitted.append(doc)
    click.echo(json.dumps(doc, sort_keys=True))


def json_emitted() -> bool:
    return bool(_emitted)


def json_requested(argv: list[str]) -> bool:
    """Whether the command line asks for ``--json`` (options end at ``--``)."""
    args = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in args


def error_json(code: int, kind: str, message: str) -> dict[str, object]:
    """The ``error`` object of a failed command under ``--json``: its exit code,
    the error's class (``NotFound``, ``ConfigError``, ``UsageError``...) and
    the one-line message also printed on stderr."""
    return {"code": code, "kind": kind, "message": message}


def error_of(exc: BaseException) -> dict[str, object]:
    code = getattr(exc, "exit_code", 1)
    return error_json(code if isinstance(code, int) else 1, type(exc).__name__, str(exc))


def progress_bar(enabled: bool) -> Progress | None:
    """A rich progress display on stderr, or None when not a terminal (or --quiet)."""
    if not enabled or quiet():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def human(n: int) -> str:
    """Bytes for people: 1 decimal, powers of 1000 (as disk vendors and rates)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
