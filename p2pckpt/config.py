"""Node configuration: ``HOME/config.toml`` (or ``--config FILE``), validated.

Layers, later wins: built-in defaults, the TOML file, command-line flags.
Unknown keys are errors (a typo must not silently disable something), and
the file is data, never code. Example::

    [serve]
    listen = "0.0.0.0:7450"

    [discovery]
    mdns = true
    interfaces = ["eth0"]        # default: all

    [relay]
    addr = "relay.example.org:7451"

    [[peer]]                     # static peers: where to find a peer ID
    id = "ABCDE-FGHIJ-..."
    addr = ["10.0.0.5:7450"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pckpt.errors import ConfigError
from p2pckpt.identity.peer_id import PeerId

CONFIG_FILE = "config.toml"
DEFAULT_LISTEN = "0.0.0.0:7450"
MAX_STATIC_PEERS = 1024
Addr = tuple[str, int]


def parse_addr(text: str, allow_zero: bool = False) -> Addr:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``); port 0 only for listening."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    low = 0 if allow_zero else 1
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad address {text!r}: use HOST:PORT")
    if not low <= int(port) < 65536:
        raise ConfigError(f"bad address {text!r}: the port must be {low}..65535")
    return host, int(port)


@dataclass(frozen=True)
class StaticPeer:
    peer: PeerId
    addrs: tuple[Addr, ...]


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    mdns: bool = True
    interfaces: tuple[str, ...] = ()
    relay: Addr | None = None
    peers: tuple[StaticPeer, ...] = field(default=())

    def static_addrs(self, peer: PeerId) -> list[Addr]:
        return [a for p in self.peers if p.peer == peer for a in p.addrs]

    def with_flags(self, **flags: Any) -> Config:
        """Command-line flags on top (None means "not given")."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})


_SCHEMA: dict[str, set[str]] = {
    "serve": {"listen"},
    "discovery": {"mdns", "interfaces"},
    "relay": {"addr"},
    "peer": {"id", "addr", "name"},
}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(value) - _SCHEMA[name]
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string")
    return value


def parse(doc: dict[str, Any]) -> Config:
    """Build a Config from a parsed TOML document."""
    unknown = set(doc) - set(_SCHEMA)
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    serve, disc, relay = _table(doc, "serve"), _table(doc, "discovery"), _table(doc, "relay")
    cfg = Config()
    if "listen" in serve:
        parse_addr(_str(serve["listen"], "serve.listen"), allow_zero=True)
        cfg = replace(cfg, listen=serve["listen"])
    if "mdns" in disc:
        if not isinstance(disc["mdns"], bool):
            raise ConfigError("discovery.mdns must be true or false")
        cfg = replace(cfg, mdns=disc["mdns"])
    if "interfaces" in disc:
        ifaces = disc["interfaces"]
        if not isinstance(ifaces, list) or not all(isinstance(i, str) for i in ifaces):
            raise ConfigError("discovery.interfaces must be a list of names or addresses")
        cfg = replace(cfg, interfaces=tuple(ifaces))
    if "addr" in relay:
        cfg = replace(cfg, relay=parse_addr(_str(relay["addr"], "relay.addr")))
    peers = doc.get("peer", [])
    if not isinstance(peers, list) or len(peers) > MAX_STATIC_PEERS:
        raise ConfigError(f"[[peer]] must be a list of at most {MAX_STATIC_PEERS} tables")
    static = []
    for entry in peers:
        if not isinstance(entry, dict):
            raise ConfigError("each [[peer]] must be a table")
        unknown = set(entry) - _SCHEMA["peer"]
        if unknown:
            raise ConfigError(f"unknown key(s) in [[peer]]: {', '.join(sorted(unknown))}")
        if "id" not in entry:
            raise ConfigError("[[peer]] needs an id")
        addrs = entry.get("addr", [])
        if isinstance(addrs, str):
            addrs = [addrs]
        if not isinstance(addrs, list) or not addrs:
            raise ConfigError("[[peer]] addr must be HOST:PORT or a list of them")
        static.append(
            StaticPeer(
                PeerId.parse(_str(entry["id"], "peer.id")),
                tuple(parse_addr(_str(a, "peer.addr")) for a in addrs),
            )
        )
    return replace(cfg, peers=tuple(static))


def load(home: Path, path: Path | None = None) -> Config:
    """The config at ``path`` or ``HOME/config.toml``; defaults if that is absent."""
    target = path or home / CONFIG_FILE
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        if path is not None:
            raise ConfigError(f"no config file at {path}") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {target}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{target}: {exc}") from None
    try:
        return parse(doc)
    except ConfigError as exc:
        raise ConfigError(f"{target}: {exc}") from None
