"""Node configuration: ``HOME/config.toml`` (and ``--config FILE``), validated.

Layers, later wins: built-in defaults, ``HOME/config.toml``, ``--config FILE``
(key by key: see ``overlay``), command-line flags.
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

    [[watch]]                    # daemon: publish what appears here, once complete
    path = "/srv/ckpt/llama-ft"  # each child (a directory or a file) is one version
    name = "llama-ft"
    complete = "stable"          # "stable" (no change for stable_seconds), "marker", "index"
    stable_seconds = 30
    marker = "COMPLETE"          # with complete = "marker": this file inside a directory
    keep = 0                     # newest published versions offered (0: all); files stay
    stream = false               # offer each finished shard at once, signed "in progress"

    [[follow]]                   # daemon: pull new versions of a name as they appear
    name = "llama-ft"
    dir = "/srv/models"          # versions in DIR/NAME/<version>, DIR/NAME/current -> newest
    keep = 3                     # newest versions kept on disk (never `current`)
    hook = ["/usr/local/bin/reload-server"]   # argv (no shell); env has P2PCKPT_NAME etc.
    publishers = ["nas"]         # whose versions are installed (IDs or trusted names);
                                 # absent: every peer trusted with the "publish" role
    allow_expired = false        # install a newest version whose signed expiry passed

    [limits]                     # bytes/s: a whole number, or "50MB", "10M", "1.5GiB"
    upload = 0                   # for serving, 0 = unlimited
    upload_per_peer = 0          # for serving any one peer, 0 = unlimited
    download = "100M"            # for the daemon's own pulls, 0 = unlimited

Sizes and rates (``parse_size``): a plain whole number is bytes; ``K``,
``M``, ``G``, ``T`` (or ``KB``, ``MB``, ...; any case) are powers of 1000,
``KiB``, ``MiB``, ``GiB``, ``TiB`` (or ``Ki``, ``Mi``, ...) powers of 1024.
Unlike rsync's ``--bwlimit``, a bare ``K`` is 1000, as ``human()`` prints.

    [metrics]
    listen = "127.0.0.1:9450"    # Prometheus endpoint; absent = off

    [transfer]
    compress = "auto"            # pack chunks we serve where it pays for its CPU; "off": never

    [web]                        # daemon: a local web page (``p2pckpt.daemon.web``); absent = off
    listen = "127.0.0.1:7460"    # loopback unless you mean it; every API call needs HOME/web-token
    read_only = false            # true: the page only shows (no pin, rollback, unpublish)
    hosts = []                   # extra Host names the page may be reached by (e.g. "nas.lan")
    pull_dir = "/srv/pulled"     # where the page's "pull" puts a name not followed (NAME/VERSION)
"""

from __future__ import annotations

import re
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
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ConfigError(f"bad address {text!r}: use HOST:PORT")
    if not low <= int(port) < 65536:
        raise ConfigError(f"bad address {text!r}: the port must be {low}..65535")
    return host, int(port)


@dataclass(frozen=True)
class StaticPeer:
    peer: PeerId
    addrs: tuple[Addr, ...]


COMPLETE_RULES = ("stable", "marker", "index")
COMPRESS_MODES = ("auto", "off")


@dataclass(frozen=True)
class WatchSpec:
    path: Path
    name: str
    complete: str = "stable"
    stable_seconds: float = 30.0
    marker: str = "COMPLETE"
    keep: int = 0
    stream: bool = False  # offer finished files of a child still being written (issue 21)


@dataclass(frozen=True)
class FollowSpec:
    name: str
    dir: Path
    keep: int = 3
    hook: tuple[str, ...] = ()
    publishers: tuple[str, ...] = ()  # IDs or trusted names; () = peers with "publish"
    allow_expired: bool = False


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    mdns: bool = True
    interfaces: tuple[str, ...] = ()
    relay: Addr | None = None
    peers: tuple[StaticPeer, ...] = field(default=())
    watch: tuple[WatchSpec, ...] = ()
    follow: tuple[FollowSpec, ...] = ()
    upload: int = 0  # upload cap for the whole node, bytes/s (0: none)
    upload_per_peer: int = 0  # upload cap for each peer, bytes/s (0: none)
    download: int = 0  # download cap for the daemon's pulls, bytes/s (0: none)
    metrics: Addr | None = None
    compress: str = "auto"  # COMPRESS_MODES: pack served chunks where it pays, or never
    web: Addr | None = None  # [web] listen: the daemon's web page (None: off)
    web_read_only: bool = False
    web_hosts: tuple[str, ...] = ()  # Host names accepted beside the listen address and loopback
    web_pull_dir: Path | None = None  # [web] pull_dir: where the page pulls names not followed

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
    "watch": {"path", "name", "complete", "stable_seconds", "marker", "keep", "stream"},
    "follow": {"name", "dir", "keep", "hook", "publishers", "allow_expired"},
    "limits": {"upload", "upload_per_peer", "download"},
    "metrics": {"listen"},
    "transfer": {"compress"},
    "web": {"listen", "read_only", "hosts", "pull_dir"},
}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(value) - _SCHEMA[name]
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    return value


def _entries(doc: dict[str, Any], name: str, limit: int = MAX_STATIC_PEERS) -> list[dict[str, Any]]:
    """The tables of an array of tables ``[[name]]``, each checked for unknown keys."""
    entries = doc.get(name, [])
    if not isinstance(entries, list) or len(entries) > limit:
        raise ConfigError(f"[[{name}]] must be a list of at most {limit} tables")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"each [[{name}]] must be a table")
        unknown = set(entry) - _SCHEMA[name]
        if unknown:
            raise ConfigError(f"unknown key(s) in [[{name}]]: {', '.join(sorted(unknown))}")
    return entries


def _int(value: object, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise ConfigError(f"{what} must be a whole number ≥ {low}")
    return value


def _size(value: object, what: str) -> int:
    """A byte count or rate from the config: a whole number or a string with a unit."""
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    return _int(value, what)


def _checkpoint_name(value: object, what: str) -> str:
    from p2pckpt.manifest.manifest import NAME_RE

    text = _str(value, what)
    if not NAME_RE.fullmatch(text):
        raise ConfigError(f"{what} {text!r}: use letters, digits, '.', '_' or '-'")
    return text


def _watch(entry: dict[str, Any]) -> WatchSpec:
    if "path" not in entry or "name" not in entry:
        raise ConfigError("[[watch]] needs path and name")
    complete = _str(entry.get("complete", "stable"), "watch.complete")
    if complete not in COMPLETE_RULES:
        raise ConfigError(f"watch.complete must be one of {', '.join(COMPLETE_RULES)}")
    seconds = entry.get("stable_seconds", 30)
    if type(seconds) not in (int, float) or not 0 < seconds <= 86400:
        raise ConfigError("watch.stable_seconds must be a number of seconds, 0 < s <= 86400")
    marker = _str(entry.get("marker", "COMPLETE"), "watch.marker")
    if not marker or "/" in marker or marker in (".", ".."):
        raise ConfigError("watch.marker must be a plain file name")
    return WatchSpec(
        path=Path(_str(entry["path"], "watch.path")),
        name=_checkpoint_name(entry["name"], "watch.name"),
        complete=complete,
        stable_seconds=float(seconds),
        marker=marker,
        keep=_int(entry.get("keep", 0), "watch.keep"),
        stream=_flag(entry.get("stream", False), "watch.stream"),
    )


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false")
    return value


def _follow(entry: dict[str, Any]) -> FollowSpec:
    if "name" not in entry or "dir" not in entry:
        raise ConfigError("[[follow]] needs name and dir")
    hook = entry.get("hook", [])
    if isinstance(hook, str):
        hook = [hook]
    if not isinstance(hook, list) or not all(isinstance(h, str) and h for h in hook):
        raise ConfigError("follow.hook must be a command as a list of strings (no shell)")
    publishers = entry.get("publishers", [])
    if not isinstance(publishers, list) or not all(
        isinstance(p, str) and 0 < len(p) <= 80 and p.isprintable() for p in publishers
    ):
        raise ConfigError("follow.publishers must be a list of peer IDs or trusted peer names")
    allow_expired = entry.get("allow_expired", False)
    if not isinstance(allow_expired, bool):
        raise ConfigError("follow.allow_expired must be true or false")
    return FollowSpec(
        name=_checkpoint_name(entry["name"], "follow.name"),
        dir=Path(_str(entry["dir"], "follow.dir")),
        keep=_int(entry.get("keep", 3), "follow.keep", low=1),
        hook=tuple(hook),
        publishers=tuple(publishers),
        allow_expired=allow_expired,
    )


_DURATION_RE = re.compile(r"([0-9]{1,9})\s*([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` into whole seconds (> 0)."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise ConfigError(f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 7d, 2w)")
    return int(match[1]) * _UNIT[match[2]]


_SIZE_RE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([kmgt]?)(i?)(b?)(?:/s)?")
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
MAX_SIZE = 1 << 62


def parse_size(text: str) -> int:
    """Bytes (or bytes/s) with an optional unit, into a whole number >= 0.

    ``1500``, ``10M`` / ``10MB`` (10,000,000: K, M, G, T are powers of 1000),
    ``10Mi`` / ``10MiB`` (10,485,760: powers of 1024), ``1.5G``; a trailing
    ``/s`` is allowed for rates. Fractions are allowed with a unit and
    rounded down to whole bytes."""
    match = _SIZE_RE.fullmatch(text.strip().lower())
    if match is None or (match[3] and not match[2]):
        raise ConfigError(
            f"not a size: {text!r} (bytes, or with a unit: 50MB, 10M = 10,000,000;"
            " 10MiB = 10,485,760)"
        )
    number, unit, binary = match[1], match[2], match[3]
    if "." in number and not unit:
        raise ConfigError(f"not a size: {text!r} (a fraction needs a unit, e.g. 1.5G)")
    base = 1024 if binary else 1000
    from decimal import Decimal

    value = int(Decimal(number) * base ** _SIZE_POWER[unit])
    if value > MAX_SIZE:
        raise ConfigError(f"size too large: {text!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string")
    return value


_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def _web(web: dict[str, Any], cfg: Config) -> Config:
    """``[web]``: off unless ``listen`` is set."""
    if not web:
        return cfg
    if "listen" not in web:
        raise ConfigError('[web] needs listen (e.g. "127.0.0.1:7460")')
    addr = parse_addr(_str(web["listen"], "web.listen"), allow_zero=True)
    read_only = web.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ConfigError("web.read_only must be true or false")
    hosts = web.get("hosts", [])
    if (
        not isinstance(hosts, list)
        or len(hosts) > 16
        or not all(isinstance(h, str) and _HOST_RE.fullmatch(h) for h in hosts)
    ):
        raise ConfigError("web.hosts must be a list of at most 16 host names (no port)")
    pull_dir = None
    if "pull_dir" in web:
        pull_dir = Path(_str(web["pull_dir"], "web.pull_dir")).expanduser()
        if not pull_dir.is_absolute():
            raise ConfigError("web.pull_dir must be an absolute path")
    return replace(
        cfg, web=addr, web_read_only=read_only, web_hosts=tuple(hosts), web_pull_dir=pull_dir
    )


def parse(doc: dict[str, Any]) -> Config:
    """Build a Config from a parsed TOML document."""
    unknown = set(doc) - set(_SCHEMA)
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    serve, disc, relay = _table(doc, "serve"), _table(doc, "discovery"), _table(doc, "relay")
    limits, metrics = _table(doc, "limits"), _table(doc, "metrics")
    transfer = _table(doc, "transfer")
    cfg = _web(_table(doc, "web"), Config())
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
    if "upload" in limits:
        cfg = replace(cfg, upload=_size(limits["upload"], "limits.upload"))
    if "upload_per_peer" in limits:
        cfg = replace(
            cfg, upload_per_peer=_size(limits["upload_per_peer"], "limits.upload_per_peer")
        )
    if "download" in limits:
        cfg = replace(cfg, download=_size(limits["download"], "limits.download"))
    if "listen" in metrics:
        cfg = replace(cfg, metrics=parse_addr(_str(metrics["listen"], "metrics.listen")))
    if "compress" in transfer:
        compress = _str(transfer["compress"], "transfer.compress")
        if compress not in COMPRESS_MODES:
            raise ConfigError(f"transfer.compress must be one of {', '.join(COMPRESS_MODES)}")
        cfg = replace(cfg, compress=compress)
    cfg = replace(
        cfg,
        watch=tuple(_watch(e) for e in _entries(doc, "watch")),
        follow=tuple(_follow(e) for e in _entries(doc, "follow")),
    )
    names = [f.name for f in cfg.follow]
    if len(names) != len(set(names)):
        raise ConfigError("a name is followed at most once")
    static = []
    for entry in _entries(doc, "peer"):
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


def _read(target: Path, given: bool) -> dict[str, Any] | None:
    """The TOML document at ``target``, checked on its own (errors name the file);
    None if it is absent and was not ``given`` on the command line."""
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        if given:
            raise ConfigError(f"no config file at {target}") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {target}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:  # deep nesting
        raise ConfigError(f"{target}: {exc}") from None
    try:
        parse(doc)
    except ConfigError as exc:
        raise ConfigError(f"{target}: {exc}") from None
    return doc


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: in a table (``[limits]``) each key ``top`` sets
    wins and the others stay; an array of tables (``[[follow]]``, ``[[watch]]``,
    ``[[peer]]``) in ``top`` replaces ``base``'s whole array."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load(home: Path, path: Path | None = None) -> Config:
    """``HOME/config.toml`` (defaults if absent), with ``path`` (``--config
    FILE``) laid over it: keys FILE sets win, the rest come from the home's
    (see ``overlay``)."""
    own = home / CONFIG_FILE
    base = _read(own, given=False)
    if path is None or path.absolute() == own.absolute():
        return parse(base) if base is not None else Config()
    top = _read(path, given=True)
    assert top is not None
    if base is None:
        return parse(top)
    try:
        return parse(overlay(base, top))
    except ConfigError as exc:  # each is valid alone; together, e.g. a name followed twice
        raise ConfigError(f"{path} over {own}: {exc}") from None
