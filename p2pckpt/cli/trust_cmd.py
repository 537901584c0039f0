"""``p2pckpt trust add|ls|rm``: the peers this node talks to, and their roles."""

from __future__ import annotations

import click

from p2pckpt.cli.common import cli, command, emit_json, note, open_home, say
from p2pckpt.errors import ConfigError


@cli.group()
def trust() -> None:
    """Manage the peers this node talks to."""


@command(trust, name="add")
@click.argument("peer_id")
@click.option("--name", default="", help="A label for the peer.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["pull", "publish", "push"]),
    help="What that peer may do here (repeatable; default: pull only): pull = fetch our"
    " checkpoints, publish = versions it signs are accepted here, push = ask us to pull.",
)
def trust_add(peer_id: str, name: str, roles: tuple[str, ...]) -> None:
    """Trust PEER_ID with ROLEs (adding it again replaces its roles)."""
    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.identity.trust import DEFAULT_ROLES

    home = open_home()
    pid = PeerId.parse(peer_id)
    if pid == home.key.peer_id:
        raise ConfigError("that is this node's own ID (a node always trusts itself)")
    old = home.trust.get(pid)
    peer = home.trust.add(pid, name or (old.name if old else ""), roles or DEFAULT_ROLES)
    home.save_trust()
    verb = "trusted" if old is None else "updated"
    if old is not None and old.roles != peer.roles:
        verb += f" (roles were {', '.join(sorted(old.roles))})"
    say(f"{verb} {peer.peer_id} ({peer.name or '-'}): {', '.join(sorted(peer.roles))}")


@command(trust, name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def trust_ls(as_json: bool) -> None:
    """List trusted peers."""
    peers = list(open_home().trust)
    if not peers and not as_json:
        note("no trusted peers (add one with 'p2pckpt trust add PEER_ID')")
    if as_json:
        emit_json([{"id": str(p.peer_id), "name": p.name, "roles": sorted(p.roles)} for p in peers])
        return
    from p2pckpt.identity.trust import ROLE_WORDS, ROLES

    if peers:
        width = max(len(str(p.peer_id)) for p in peers)
        click.echo(f"{'PEER ID':<{width}}  {'NAME':<16} ROLES (what that peer may do here)")
    for p in peers:
        words = "; ".join(ROLE_WORDS[r] for r in ROLES if r in p.roles)
        click.echo(f"{p.peer_id}  {p.name or '-':<16} {','.join(sorted(p.roles))}: {words}")


@command(trust, name="rm")
@click.argument("peer", metavar="PEER_ID|NAME")
def trust_rm(peer: str) -> None:
    """Stop trusting a peer (by ID or by its --name), at once, running daemon included.

    What it signed is forgotten too: the newest versions seen from it (so a
    stolen key's huge version number blocks nothing) and the versions pulled
    from it, which are no longer offered (their files stay)."""
    home = open_home()
    pid = home.trust.resolve(peer)
    home.trust.remove(pid)
    home.save_trust()
    names, rows = home.catalog.forget_publisher(pid.key)
    say(f"removed {pid}")
    if names or rows:
        dropped = ", ".join(f"{e.name}@{e.version}" for e in rows) or "none"
        say(
            f"forgot what it signed: newest-version records for {names} name(s); versions"
            f" no longer offered: {dropped} (files left in place)"
        )
