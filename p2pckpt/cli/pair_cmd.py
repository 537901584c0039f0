"""``p2pckpt pair [CODE]``: trust another node in one step each, by a short code."""

from __future__ import annotations

import socket
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p2pckpt.cli.common import command, config_option, emit_json, load_config, open_home
from p2pckpt.errors import ConfigError

if TYPE_CHECKING:
    from p2pckpt.home import Home
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.pairing.session import Outcome

ROLES = ("pull", "publish", "push")
FIND_TIMEOUT = 10.0  # seconds the joiner looks for the inviter on the LAN


@command()
@click.argument("code", required=False)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="Inviting: what the other node may do here (repeatable; default: pull).",
)
@click.option(
    "--grant",
    multiple=True,
    type=click.Choice(ROLES),
    help="Joining: what the inviter may do here (repeatable; default: the counterpart"
    " of its offer: pull -> publish, publish or push -> pull).",
)
@click.option(
    "--listen",
    default="0.0.0.0:0",
    metavar="HOST:PORT",
    help="Inviting: where the other node reaches us (default: every interface, a free port).",
)
@click.option(
    "--from",
    "from_addr",
    default=None,
    metavar="HOST:PORT",
    help="Joining: the inviter's address (default: found on the LAN by mDNS).",
)
@click.option(
    "--relay",
    default=None,
    metavar="HOST:PORT",
    help="Meet through this relay too (default: [relay] addr of the config, if any).",
)
@click.option("--name", default="", help="What to call the other node here (default: its name).")
@click.option(
    "--as", "as_name", default="", help="The name we give the other node (default: host name)."
)
@click.option(
    "--expires",
    default=600,
    type=click.IntRange(1, 3600),
    show_default=True,
    help="Inviting: seconds the code stays valid.",
)
@click.option("-y", "--yes", is_flag=True, help="Joining: grant without asking.")
@click.option("--no-mdns", is_flag=True, help="Neither announce nor look on the LAN (mDNS).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines).")
@config_option
def pair(
    code: str | None,
    roles: tuple[str, ...],
    grant: tuple[str, ...],
    listen: str,
    from_addr: str | None,
    relay: str | None,
    name: str,
    as_name: str,
    expires: int,
    yes: bool,
    no_mdns: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Pair with another node by a one-time code, each pinning the other's key.

    Without CODE, invite: print a code (alone on the first line) and wait for
    the other node to join with it; the other node gets --role here. With
    CODE, join: find the inviter (on the LAN, or --from HOST:PORT), show
    both nodes' IDs and what it offers, and grant --grant back.

    The code is never sent: both sides prove they know it (SPAKE2, bound to
    both node keys) inside the usual encrypted channel. It works once: a
    wrong code spends it, so a guesser gets one try."""
    from p2pckpt.config import parse_addr

    home = open_home()
    cfg = load_config(
        home,
        config_path,
        mdns=False if no_mdns else None,
        relay=parse_addr(relay) if relay else None,
    )
    interfaces = list(cfg.interfaces) or None
    me = as_name or socket.gethostname()[:64]
    if code is None:
        if grant or from_addr or yes:
            raise ConfigError("--grant, --from and --yes are for joining: 'p2pckpt pair CODE'")
        host, port = parse_addr(listen, allow_zero=True)
        outcome = _invite(home, frozenset(roles or ("pull",)), me, name, host, port, expires,
                          cfg.mdns, cfg.relay, interfaces, as_json)  # fmt: skip
    else:
        if roles or listen != "0.0.0.0:0":
            raise ConfigError("--role and --listen are for inviting: 'p2pckpt pair' alone")
        from p2pckpt.pairing.words import parse_code

        parsed = parse_code(code)
        addr = parse_addr(from_addr) if from_addr else None
        if addr is None and not cfg.mdns and cfg.relay is None:
            raise ConfigError(
                "mDNS is off and no relay is set: give the inviter's address with --from HOST:PORT"
            )
        chosen = frozenset(grant) if grant else None
        outcome = _join(home, parsed, addr, cfg.mdns, cfg.relay, me, name, chosen, yes,
                        interfaces, as_json)  # fmt: skip
    _report(home, outcome, as_json)


def _invite(
    home: Home,
    roles: frozenset[str],
    me: str,
    call: str,
    host: str,
    port: int,
    expires: int,
    mdns: bool,
    relay: tuple[str, int] | None,
    interfaces: list[str] | None,
    as_json: bool,
) -> Outcome:
    from p2pckpt.cli.stopping import run_stoppable
    from p2pckpt.net.listen import open_listeners
    from p2pckpt.pairing.session import Invitation
    from p2pckpt.pairing.words import new_code

    code = new_code()

    async def run() -> Outcome:
        import trio

        listeners = await open_listeners(host, port, "pairing")
        bound = listeners[0].socket.getsockname()[1]
        if as_json:
            emit_json({"code": str(code), "expires_seconds": expires, "port": bound})
        else:
            click.echo(str(code))
        sys.stdout.flush()
        click.echo(
            f"this node: {home.key.peer_id}\n"
            f"on the other node run:  p2pckpt pair {code}"
            + ("   (found on this LAN by mDNS)" if mdns else "")
            + (
                f"\n                    or:  p2pckpt pair {code} --relay {relay[0]}:{relay[1]}"
                if relay
                else ""
            )
            + f"\n                    or:  p2pckpt pair {code} --from {_where(host)}:{bound}\n"
            f"it will be trusted here with: {', '.join(sorted(roles))}"
            f" (the code works once, for {expires // 60 or 1} minute(s))",
            err=True,
        )
        invitation = Invitation(home, code, roles, me, call)

        def on_relay() -> None:
            assert relay is not None
            click.echo(f"waiting at relay {relay[0]}:{relay[1]} too", err=True)

        try:
            async with trio.open_nursery() as nursery:
                if mdns:
                    from p2pckpt.discovery.mdns import announce_pairing

                    announce = partial(announce_pairing, interfaces=interfaces)
                    await nursery.start(announce, code.nameplate, bound)
                outcome = await invitation.serve(listeners, expires, relay, on_relay)
                nursery.cancel_scope.cancel()  # the announcement ends
        finally:
            for listener in listeners:
                await listener.aclose()
        return outcome

    return run_stoppable(run)


def _where(host: str) -> str:
    """An address of ours worth giving to a joiner."""
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 -- recognising it, not binding
        return f"[{host}]" if ":" in host else host
    from p2pckpt.discovery.mdns import local_ipv4

    found = local_ipv4()
    return found[0] if found else "THIS-HOST"


def _join(
    home: Home,
    code: object,
    addr: tuple[str, int] | None,
    mdns: bool,
    relay: tuple[str, int] | None,
    me: str,
    call: str,
    chosen: frozenset[str] | None,
    yes: bool,
    interfaces: list[str] | None,
    as_json: bool,
) -> Outcome:
    from p2pckpt.cli.stopping import run_stoppable
    from p2pckpt.errors import PeerUnreachable
    from p2pckpt.pairing.core import grant_back
    from p2pckpt.pairing.session import direct, join, through_relay
    from p2pckpt.pairing.words import Code

    assert isinstance(code, Code)
    ask = not yes and chosen is None
    if ask and (as_json or not sys.stdin.isatty()):
        raise ConfigError(
            "no terminal to ask whether to grant the inviter its default roles:"
            " pass --yes, or choose them with --grant ROLE"
        )

    async def decide(
        peer: PeerId, their_name: str, offered: frozenset[str]
    ) -> frozenset[str] | None:
        granted = chosen if chosen is not None else grant_back(offered)
        if not as_json:
            click.echo(
                f"inviter: {their_name or '-'} {peer}\n"
                f"this node: {home.key.peer_id}\n"
                f"it lets us: {', '.join(sorted(offered)) or 'nothing'}; we grant it:"
                f" {', '.join(sorted(granted)) or 'nothing'}",
                err=True,
            )
        if ask:
            import trio

            ok = await trio.to_thread.run_sync(
                lambda: click.confirm("pin this node with those roles?", default=True, err=True)
            )
            if not ok:
                return None
        return granted

    async def run() -> Outcome:
        if addr is not None:
            ways = [direct(*addr)]
        else:
            ways = []
            if mdns:
                from p2pckpt.discovery.mdns import find_pairing

                wait = FIND_TIMEOUT if relay is None else FIND_TIMEOUT / 3
                found = await find_pairing(code.nameplate, wait, interfaces=interfaces)
                ways = [direct(*a) for a in found]
            if relay is not None:
                ways.append(through_relay(relay, code))
            if not ways:
                raise PeerUnreachable(
                    f"no invitation numbered {code.nameplate} answered on this LAN within"
                    f" {FIND_TIMEOUT:g} s: is 'p2pckpt pair' waiting on the other node?"
                    " (or give its address: --from HOST:PORT, or a relay: --relay HOST:PORT)"
                )
        return await join(home, code, ways, me, call, decide)

    return run_stoppable(run)


def _report(home: Home, outcome: Outcome, as_json: bool) -> None:
    p = outcome.paired
    if as_json:
        emit_json(
            {
                "paired": str(outcome.peer),
                "name": p.their_name,
                "roles_for_them": sorted(p.roles_for_them),
                "roles_for_us": sorted(p.roles_for_us),
                "this_node": str(home.key.peer_id),
            }
        )
        return
    them = ", ".join(sorted(p.roles_for_them)) or "nothing"
    us = ", ".join(sorted(p.roles_for_us)) or "nothing"
    click.echo(f"paired with {p.their_name} {outcome.peer}")
    click.echo(f"  it may: {them} (here);  we may: {us} (there)")
    click.echo(f"  this node: {home.key.peer_id}")
