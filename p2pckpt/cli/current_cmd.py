"""``p2pckpt current NAME [--pin V | --unpin | --rollback]``: a follower's
``current`` link, shown or switched by hand.

With a daemon running for the home the switch happens inside it (through
the control socket), so it never races the daemon's own switches; with none,
directly on the follow's directory from the home's config (or ``--config``).
Either way the hook runs as for an automatic switch. Exit 3 for a name not
followed or a version not kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import click

from p2pckpt.cli.common import command, config_option, emit_json, home_path, load_config, open_home


@command()
@click.argument("name")
@click.option(
    "--pin", "pin", type=int, default=None, metavar="V", help="Switch to kept V; hold it."
)
@click.option("--unpin", is_flag=True, help="Release the pin: switch to the newest kept version.")
@click.option("--rollback", is_flag=True, help="Switch to the previous kept version; pin it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@config_option
def current(
    name: str,
    pin: int | None,
    unpin: bool,
    rollback: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Show or switch a followed NAME's `current` link."""
    import trio

    from p2pckpt.daemon.control import request
    from p2pckpt.daemon.follow import switch
    from p2pckpt.errors import ConfigError, DaemonNotRunning, NotFound, P2pckptError

    if (pin is not None) + unpin + rollback > 1:
        raise ConfigError("use one of --pin, --unpin and --rollback")
    action = "pin" if pin is not None else "unpin" if unpin else "rollback" if rollback else "show"
    try:
        asked = partial(request, home_path(), "current", name=name, action=action, version=pin)
        doc = trio.run(asked)
    except DaemonNotRunning:
        home = open_home()
        spec = next((f for f in load_config(home, config_path).follow if f.name == name), None)
        if spec is None:
            raise NotFound(f"this node does not follow {name!r} (no [[follow]] for it)") from None
        doc = trio.run(switch, home, spec, action, pin)
    doc = doc if isinstance(doc, Mapping) else {}
    if as_json:
        emit_json(doc)
    else:
        click.echo(describe(doc))
    hook = doc.get("hook")
    if isinstance(hook, Mapping) and hook.get("code") != 0:
        why = hook.get("error") or "exit {}".format(hook.get("code"))
        raise P2pckptError(f"current was switched, but the hook failed: {why}")


def describe(doc: Mapping[str, Any]) -> str:
    """One line per fact, for people (the daemon's document is not trusted)."""
    from p2pckpt.manifest.paths import safe_display

    name = str(doc.get("name", "?"))
    if doc.get("pending"):
        return safe_display(f"{name}: switched; the hook is still running (see 'p2pckpt status')")
    now, pinned = doc.get("current"), doc.get("pinned")
    line = safe_display(f"{name}: current {now if now is not None else 'none'}")
    if pinned is not None:
        line += f" (pinned at {pinned})"
    kept = doc.get("kept")
    if isinstance(kept, list):
        line += f"; kept: {', '.join(map(str, kept)) or 'none'}"
    out = [line]
    hook = doc.get("hook")
    if isinstance(hook, Mapping):
        code = hook.get("code")
        what = f"exit {code}" if code is not None else f"failed: {hook.get('error')}"
        out.append(safe_display(f"hook for version {hook.get('version')}: {what}"))
    elif doc.get("switched"):
        out.append("no hook configured")
    return "\n".join(out)
