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
from dataclasses import dataclass


def ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=check, capture_output=True, timeout=20)


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
def lan() -> Iterator[Lan]:
    tag = f"p2p{os.getpid() % 100000}"
    names = {k: f"{tag}{k}" for k in ("sw", "a", "b", "m", "r", "c")}
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
        addr = {"a": "10.231.0.1", "b": "10.231.0.2", "r": "10.231.0.3", "m": "10.231.0.4"}
        for key, address in addr.items():
            ns = names[key]
            host_if, sw_if = f"{tag}{key}h", f"{tag}{key}s"
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
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
