"""Real mDNS between network namespaces: announce, epoch update, goodbye, spoofing.

Topology, created for this module only and removed at teardown (root only)::

    ns A 10.233.0.1 (announcer) ─┐
    ns B 10.233.0.2 (browser)   ─┼─ br0 in ns SW (mcast_snooping 0)
    ns M 10.233.0.3 (spoofer)   ─┘

Nothing is created in, or sent from, the root namespace: each veth is made
inside SW with its peer end moved straight into the host namespace. Every
wait polls a real condition (a line from a process) against a deadline.
The last test needs no network: it drives the Browser's view directly.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import trio
import trio.testing

from p2pckpt.discovery.mdns import MAX_SERVICES, Browser
from p2pckpt.discovery.txt import Announcement
from p2pckpt.identity.peer_id import PeerId

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces (ip netns add, veth, bridge) need root"
)

NODE = str(Path(__file__).with_name("mdns_node.py"))
DEADLINE = 10.0  # seconds for any one thing to be seen
ADDR = {"a": "10.233.0.1", "b": "10.233.0.2", "m": "10.233.0.3"}
PEER_A = PeerId(bytes(range(1, 33)))
PEER_X = PeerId(bytes(range(101, 133)))  # a node that is not on this LAN at all


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Lan:
    ns: dict[str, str]  # role -> namespace name


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    tag = f"p2pmd{os.getpid()}"
    ns = {k: f"{tag}{k}" for k in ("sw", "a", "b", "m")}
    created: list[str] = []
    try:
        for name in ns.values():
            _ip("netns", "add", name)
            created.append(name)
            _ip("link", "set", "lo", "up", ns=name)
        sw = ns["sw"]
        _ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=sw)
        _ip("link", "set", "br0", "up", ns=sw)
        for role, address in ADDR.items():
            host = ns[role]
            _ip(
                "link",
                "add",
                f"v{role}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host,
                ns=sw,
            )
            _ip("link", "set", f"v{role}", "master", "br0", ns=sw)
            _ip("link", "set", f"v{role}", "up", ns=sw)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=host)
            _ip("link", "set", "eth0", "multicast", "on", "up", ns=host)
            _ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=host)
        yield Lan(ns)
    finally:
        for name in reversed(created):  # deleting a namespace deletes its links
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@dataclass
class Actor:
    """One mdns_node.py process; its stdout lines arrive on a queue."""

    proc: subprocess.Popen[str]
    stderr: IO[str]
    lines: queue.Queue[tuple[float, str] | None] = field(default_factory=queue.Queue)
    pump: threading.Thread | None = None

    def next_line(self, deadline: float) -> tuple[float, str] | None:
        """The next stdout line and when it arrived; None at the deadline or at EOF."""
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.pump is not None:
            self.pump.join(10)  # EOF follows the exit
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture
def spawn(lan: Lan, tmp_path: Path) -> Iterator[Callable[..., Actor]]:
    actors: list[Actor] = []

    def start(role: str, *args: str) -> Actor:
        log = open(tmp_path / f"{role}-{len(actors)}.log", "w")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lan.ns[role], sys.executable, NODE, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        actor = Actor(proc, log)
        actors.append(actor)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                actor.lines.put((time.monotonic(), line.strip()))
            actor.lines.put(None)

        actor.pump = threading.Thread(target=pump, daemon=True)
        actor.pump.start()
        first = actor.next_line(time.monotonic() + 30)
        if first is None or first[1] != "ready":
            raise AssertionError(f"{args[0]} in ns {role} did not start: {_logs(tmp_path)}")
        return actor

    try:
        yield start
    finally:
        for actor in actors:
            actor.stop()


def _logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log"))
    )


def _await_view(
    browser: Actor, want: Callable[[dict[str, Any]], bool], what: str, since: float
) -> tuple[float, dict[str, Any]]:
    """Seconds from ``since`` until the browser printed a view satisfying ``want``, and it."""
    deadline = since + DEADLINE
    last: dict[str, Any] | None = None
    while (got := browser.next_line(deadline)) is not None:
        last = json.loads(got[1])
        if want(last):
            return got[0] - since, last
    raise AssertionError(f"browser never saw {what} within {DEADLINE} s; last view: {last}")


def _write_epoch(path: Path, epoch: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(epoch))
    os.replace(tmp, path)


@needs_root
def test_announce_update_goodbye(spawn: Callable[..., Actor], tmp_path: Path) -> None:
    """Seen with the right ID/address/port; a new epoch shows; a goodbye removes it."""
    epoch_file = tmp_path / "epoch"
    _write_epoch(epoch_file, 7)
    browser = spawn("b", "browse", "eth0")  # by interface name: exercises SIOCGIFADDR
    started = time.monotonic()
    announcer = spawn("a", "announce", PEER_A.key.hex(), "4001", str(epoch_file))  # all ifaces
    ready = time.monotonic()
    a = str(PEER_A)

    seen, _ = _await_view(
        browser,
        lambda v: v.get(a) == {"addrs": [[ADDR["a"], 4001]], "epoch": 7},
        "A at 10.233.0.1:4001 epoch 7",
        since=started,
    )
    bumped_at = time.monotonic()
    _write_epoch(epoch_file, 8)
    bumped, _ = _await_view(
        browser, lambda v: v.get(a, {}).get("epoch") == 8, "epoch 8", since=bumped_at
    )
    stopped_at = time.monotonic()
    announcer.stop()
    gone, _ = _await_view(browser, lambda v: a not in v, "A removed", since=stopped_at)
    print(
        f"\nmdns: announcer ready after {ready - started:.2f}s, seen after {seen:.2f}s;"
        f" epoch seen after {bumped:.2f}s; removed {gone:.2f}s after SIGTERM"
    )
    assert announcer.proc.returncode == 0


@needs_root
def test_spoofed_announcement_is_reported_as_is(
    spawn: Callable[..., Actor], tmp_path: Path
) -> None:
    """A liar's record shows up as claimed (a hint only); it cannot hide the real node.

    M announces A's peer ID and X's (X is nowhere) with M's own address. The
    browser reports exactly that; refusing the liar is the handshake's job.
    A record with a garbled peer ID is dropped (and logged), never shown.
    """
    epoch_file = tmp_path / "epoch"
    _write_epoch(epoch_file, 1)
    spawn("a", "announce", PEER_A.key.hex(), "4001", str(epoch_file), ADDR["a"])
    spawn("m", "spoof", str(PEER_X), "4666", "not-x", ADDR["m"])
    spawn("m", "spoof", str(PEER_A), "4667", "also-a", ADDR["m"])
    garbled = str(PEER_X)[:-1] + ("B" if str(PEER_X)[-1] == "A" else "A")  # bad checksum
    spawn("m", "spoof", garbled, "4668", "garbled", ADDR["m"])
    started = time.monotonic()
    browser = spawn("b", "browse")  # started last: finds them by querying
    a, x = str(PEER_A), str(PEER_X)

    found, view = _await_view(
        browser,
        lambda v: (
            v.get(x, {}).get("addrs") == [[ADDR["m"], 4666]]
            and sorted(map(tuple, v.get(a, {}).get("addrs", [])))
            == [(ADDR["a"], 4001), (ADDR["m"], 4667)]
        ),
        "X at M's address, and A at both its own and M's address",
        since=started,
    )
    print(f"\nmdns: a late browser had every record after {found:.2f}s")
    log = Path(browser.stderr.name)
    deadline = time.monotonic() + DEADLINE
    while "mdns malformed announcement name=\"'garbled." not in log.read_text():
        assert time.monotonic() < deadline, "the garbled record was not dropped"
        time.sleep(0.05)  # polling the log file: the condition itself, with a deadline
    while not browser.lines.empty():  # anything printed since: the view as it is now
        got = browser.lines.get_nowait()
        assert got is not None
        view = json.loads(got[1])
    assert set(view) == {a, x}


async def test_view_logic_in_process() -> None:
    """No network: the browser's view merges, caps, removes and wakes waiters."""
    browser = Browser(trio.lowlevel.current_trio_token())
    a1 = Announcement(PEER_A, (("10.0.0.1", 1),), 1, 1)
    assert await browser.wait_for(PEER_A, 0.05) is None

    async def later() -> None:
        await trio.testing.wait_all_tasks_blocked()  # wait_for is parked, waiting
        browser._apply("a._p2pckpt._tcp.local.", a1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await browser.wait_for(PEER_A, DEADLINE) == a1
    liar = Announcement(PEER_A, (("10.0.0.66", 66),), 99, 1)
    browser._apply("liar._p2pckpt._tcp.local.", liar)
    assert browser.peers()[PEER_A] == Announcement(
        PEER_A, (("10.0.0.66", 66), ("10.0.0.1", 1)), 99, 1
    )
    browser._apply("liar._p2pckpt._tcp.local.", None)  # removed, or its update was malformed
    assert browser.peers() == {PEER_A: a1}
    with trio.move_on_after(0.05) as scope:  # re-applying the same record is no change
        browser._apply("a._p2pckpt._tcp.local.", a1)
        await browser.changed()
    assert scope.cancelled_caught
    for i in range(MAX_SERVICES + 10):
        peer = PeerId(i.to_bytes(32, "big"))
        browser._apply(f"s{i}._p2pckpt._tcp.local.", Announcement(peer, a1.addrs, 0, 1))
    assert len(browser.peers()) == MAX_SERVICES  # a's service plus the first 1023
    browser._apply("a._p2pckpt._tcp.local.", None)
    assert PEER_A not in browser.peers()
