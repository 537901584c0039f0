"""A shaped LAN of network namespaces for the swarm benchmark (root only).

One namespace holds a bridge (the switch); every node gets its own namespace
with ``eth0`` on a veth pair into the switch. Each direction of every link is
shaped with ``tbf`` to the same rate: egress of the node's ``eth0`` (its
upload) and egress of the switch-side end (its download). No address here
exists outside these namespaces, and everything is removed on exit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import BenchError

SUBNET = "10.77.0"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def _shape(dev: str, ns: str, rate: str) -> None:
    # burst well above one GSO super-packet (64 KiB), so tbf never drops one outright
    cmd = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate]
    cmd += ["burst", "256kb", "latency", "50ms"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Lan:
    """Node name -> (namespace, address)."""

    nodes: dict[str, tuple[str, str]]

    def ns(self, node: str) -> str:
        return self.nodes[node][0]

    def addr(self, node: str) -> str:
        return self.nodes[node][1]

    def prefix(self, node: str) -> list[str]:
        """Argv prefix that runs a command inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.ns(node)]

    def sent(self, node: str) -> int:
        """Bytes ``node`` has sent on its link so far (every protocol)."""
        path = "/sys/class/net/eth0/statistics/tx_bytes"
        done = subprocess.run(
            [*self.prefix(node), "cat", path],
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return int(done.stdout)


@contextmanager
def shaped_lan(names: list[str], rate: str) -> Iterator[Lan]:
    """Namespaces for ``names`` on one switch, every link shaped to ``rate``."""
    if os.geteuid() != 0:
        raise BenchError("network namespaces need root")
    tag = f"ps{os.getpid() % 10000}"
    sw = f"{tag}sw"
    created: list[str] = []
    try:
        for ns in [sw, *(f"{tag}n{i}" for i in range(len(names)))]:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
            created.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "br0", "type", "bridge", ns=sw)
        _ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0", ns=sw)  # mDNS
        _ip("link", "set", "br0", "up", ns=sw)
        nodes = {}
        for i, name in enumerate(names):
            ns, address = f"{tag}n{i}", f"{SUBNET}.{i + 1}"
            host_if, sw_if = f"{tag}h{i}", f"{tag}s{i}"
            _ip("link", "add", host_if, "type", "veth", "peer", "name", sw_if)
            _ip("link", "set", host_if, "netns", ns)
            _ip("link", "set", sw_if, "netns", sw)
            _ip("link", "set", sw_if, "master", "br0", ns=sw)
            _ip("link", "set", sw_if, "up", ns=sw)
            _ip("link", "set", host_if, "name", "eth0", ns=ns)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "multicast", "on", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=ns)
            _shape("eth0", ns, rate)
            _shape(sw_if, sw, rate)
            nodes[name] = (ns, address)
        yield Lan(nodes)
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
