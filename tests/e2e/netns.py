"""Throwaway network namespaces for discovery and relay tests (root only).

Topology (all addresses exist only inside these namespaces)::

      ns A 10.231.0.1 ─┐
      ns B 10.231.0.2 ─┼─ bridge (ns SW, multicast flooding on)
      ns M 10.231.0.4 ─┤
      ns R 10.231.0.3 ─┘   relay host, also 10.232.0.1 ── ns C 10.232.0.2

C can reach only R. Everything is removed at teardown, even after failures.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=check, capture_output=True, timeout=20)


def _attach(label: str, ns: str, sw: str, address: str) -> None:
    """Plug namespace ``ns`` into the bridge in ``sw`` as eth0 at ``address``,
    multicast on (mDNS)."""
    host_if, sw_if = f"{label}h", f"{label}s"
    ip("link", "add", host_if, "type", "veth", "peer", "name", sw_if)
    ip("link", "set", host_if, "netns", ns)
    ip("link", "set", sw_if, "netns", sw)
    ip("link", "set", sw_if, "master", "br0", ns=sw)
    ip("link", "set", sw_if, "up", ns=sw)
    ip("link", "set", host_if, "name", "eth0", ns=ns)
    ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
    ip("link", "set", "eth0", "multicast", "on", ns=ns)
    ip("link", "set", "eth0", "up", ns=ns)
    ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=ns)


@dataclass(frozen=True)
class Lan:
    sw: str
    a: str
    b: str
    m: str
    r: str
    c: str
    addr: dict[str, str]

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]


@contextmanager
def _namespaces(tag: str, keys: list[str]) -> Iterator[dict[str, str]]:
    """A namespace per key (named tag+key) and one more, ``sw``, holding a
    bridge with multicast flooding on; all removed at exit, even after failures."""
    names = {k: f"{tag}{k}" for k in ["sw", *keys]}
    created: list[str] = []
    try:
        for ns in names.values():
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
            created.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        sw = names["sw"]
        ip("link", "add", "br0", "type", "bridge", ns=sw)
        ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0", ns=sw)
        ip("link", "set", "br0", "up", ns=sw)
        yield names
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


@contextmanager
def lan() -> Iterator[Lan]:
    tag = f"p2p{os.getpid() % 100000}"
    with _namespaces(tag, ["a", "b", "m", "r", "c"]) as names:
        sw = names["sw"]
        addr = {"a": "10.231.0.1", "b": "10.231.0.2", "r": "10.231.0.3", "m": "10.231.0.4"}
        for key, address in addr.items():
            _attach(f"{tag}{key}", names[key], sw, address)
        # The relay's second leg, to C only.
        ip("link", "add", f"{tag}rc", "type", "veth", "peer", "name", f"{tag}cr")
        ip("link", "set", f"{tag}rc", "netns", names["r"])
        ip("link", "set", f"{tag}cr", "netns", names["c"])
        ip("link", "set", f"{tag}rc", "name", "eth1", ns=names["r"])
        ip("link", "set", f"{tag}cr", "name", "eth0", ns=names["c"])
        ip("addr", "add", "10.232.0.1/24", "dev", "eth1", ns=names["r"])
        ip("addr", "add", "10.232.0.2/24", "dev", "eth0", ns=names["c"])
        ip("link", "set", "eth1", "up", ns=names["r"])
        ip("link", "set", "eth0", "up", ns=names["c"])
        addr["r2"] = "10.232.0.1"
        addr["c"] = "10.232.0.2"
        yield Lan(addr=addr, **names)


@dataclass(frozen=True)
class Bridge:
    """Namespaces on one bridged LAN, 10.233.0.1, .2, ... in the order named."""

    ns: dict[str, str]  # key -> namespace
    addr: dict[str, str]  # key -> IPv4 address
    sw: str = ""  # the namespace holding the bridge
    ports: dict[str, str] = field(default_factory=dict)  # key -> its bridge port (in sw)

    def cmd(self, key: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[key], *argv]

    def tx_bytes(self, key: str) -> int:
        """Bytes the host ``key`` has sent on the LAN so far (every protocol)."""
        out = subprocess.run(
            self.cmd(key, ["cat", "/sys/class/net/eth0/statistics/tx_bytes"]),
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return int(out.stdout)

    def shape(self, key: str, rate: str) -> None:
        """Cap what ``key`` sends (its uplink) at ``rate`` (tc syntax, e.g. 32mbit)."""
        tbf = ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate]
        subprocess.run(
            self.cmd(key, [*tbf, "burst", "64kb", "latency", "400ms"]),
            check=True,
            capture_output=True,
            timeout=20,
        )


@contextmanager
def bridge(keys: list[str]) -> Iterator[Bridge]:
    """Namespaces for ``keys`` on one bridge with multicast flooding (mDNS
    works across it); all removed at exit, even after failures."""
    tag = f"p2q{os.getpid() % 100000}"
    with _namespaces(tag, keys) as names:
        addr, ports = {}, {}
        for n, key in enumerate(keys, start=1):
            addr[key] = f"10.233.0.{n}"
            _attach(f"{tag}{n}", names[key], names["sw"], addr[key])
            ports[key] = f"{tag}{n}s"  # _attach's name for the bridge's end
        yield Bridge({k: names[k] for k in keys}, addr, names["sw"], ports)
