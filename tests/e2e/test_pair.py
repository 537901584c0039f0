"""``p2pckpt pair``: two real nodes pair by a one-time code (issue 19).

Inviters listen on 127.0.0.1 with mDNS off; the LAN case runs in network
namespaces. Adversarial cases: a wrong code, two joiners racing for one
code, a relay in the middle recording and replaying, an expired code.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.nodes import CLI, make_checkpoint, no_mdns, read_until, run, same_tree, start_server

DEADLINE = 60.0


@dataclass
class Invite:
    proc: subprocess.Popen[str]
    code: str
    port: int

    def finish(self) -> tuple[int, list[dict[str, object]], str]:
        """Exit status, the JSON lines after the first, and stderr."""
        out, err = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode, [json.loads(x) for x in out.splitlines() if x], err


def invite(home: Path, *args: str) -> Invite:
    proc = subprocess.Popen(
        [*CLI, "--home", str(home), "pair", "--listen", "127.0.0.1:0", "--no-mdns", "--json",
         *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert ready, "the inviter printed no code"
    first = json.loads(proc.stdout.readline())
    return Invite(proc, first["code"], first["port"])


def node(root: Path, name: str) -> tuple[Path, str]:
    home = root / name
    peer_id = run(home, "init").stdout.strip()
    no_mdns(home)
    return home, peer_id


def trusted(home: Path) -> dict[str, tuple[str, list[str]]]:
    return {
        p["id"]: (p["name"], p["roles"])
        for p in json.loads(run(home, "trust", "ls", "--json").stdout)
    }


@pytest.fixture
def nodes(tmp_path: Path) -> tuple[Path, str, Path, str]:
    a, a_id = node(tmp_path, "A")
    b, b_id = node(tmp_path, "B")
    return a, a_id, b, b_id


def test_pairing_pins_both_keys_with_the_offered_and_granted_roles_and_a_pull_works(
    nodes: tuple[Path, str, Path, str], tmp_path: Path
) -> None:
    a, a_id, b, b_id = nodes
    inv = invite(a, "--as", "nas")
    joined = run(b, "pair", inv.code, "--from", f"127.0.0.1:{inv.port}", "--as", "ws", "--yes")
    rc, lines, err = inv.finish()
    assert rc == 0, err
    # Both nodes' IDs are shown on both sides.
    assert a_id in err and a_id in joined.stdout + joined.stderr and b_id in joined.stdout
    assert lines[-1]["paired"] == b_id and lines[-1]["roles_for_them"] == ["pull"]
    assert lines[-1]["roles_for_us"] == ["publish"]
    assert trusted(a) == {b_id: ("ws", ["pull"])}
    assert trusted(b) == {a_id: ("nas", ["publish"])}
    # What pairing pinned is what a pull needs: B pulls a version A signed.
    src = make_checkpoint(tmp_path / "ckpt", {"model.safetensors": 3 << 20, "config.json": 300})
    run(a, "publish", str(src), "--name", "m", "--version", "1")
    server = start_server(a, tmp_path / "serve.log")
    try:
        run(b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "got"))
    finally:
        server.stop()
    assert same_tree(src, tmp_path / "got")


def test_a_wrong_code_fails_on_both_sides_pins_nothing_and_spends_the_code(
    nodes: tuple[Path, str, Path, str],
) -> None:
    a, _, b, _ = nodes
    inv = invite(a)
    number, *words = inv.code.split("-")
    wrong = "-".join([number, *words[:2], "amber" if words[2] != "amber" else "anchor"])
    joined = run(b, "pair", wrong, "--from", f"127.0.0.1:{inv.port}", "--yes", check=False)
    rc, _, err = inv.finish()
    assert joined.returncode == 5 and "wrong code" in joined.stderr
    assert rc == 5 and "wrong code" in err
    assert trusted(a) == {} and trusted(b) == {}
    # Spent: the inviter is gone, the right code finds nobody.
    late = run(b, "pair", inv.code, "--from", f"127.0.0.1:{inv.port}", "--yes", check=False)
    assert late.returncode != 0 and trusted(b) == {}


def test_two_joiners_racing_for_one_code_pair_exactly_one(tmp_path: Path) -> None:
    a, _ = node(tmp_path, "A")
    (b, b_id), (c, c_id) = node(tmp_path, "B"), node(tmp_path, "C")
    inv = invite(a)
    joiners = {
        who: subprocess.Popen(
            [
                *CLI,
                "--home",
                str(home),
                "pair",
                inv.code,
                "--from",
                f"127.0.0.1:{inv.port}",
                "--yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who, home in (("b", b), ("c", c))
    }
    codes = {who: p.wait(DEADLINE) for who, p in joiners.items()}
    for p in joiners.values():
        p.communicate(timeout=DEADLINE)
    rc, _, err = inv.finish()
    assert rc == 0, err
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, codes
    winner = b_id if codes["b"] == 0 else c_id
    assert list(trusted(a)) == [winner]
    loser_home = c if codes["b"] == 0 else b
    assert trusted(loser_home) == {}


@dataclass
class Forwarder:
    """A relay in the middle: forwards one TCP port to another, recording
    what passes each way. Stops when told to or after DEADLINE."""

    target: int
    sock: socket.socket = field(default_factory=socket.socket)
    upstream: bytearray = field(default_factory=bytearray)  # joiner -> inviter
    downstream: bytearray = field(default_factory=bytearray)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + DEADLINE
        self.sock.settimeout(1.0)
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            with client, socket.create_connection(("127.0.0.1", self.target), 10) as server:
                pairs = {client: (server, self.upstream), server: (client, self.downstream)}
                while not self.stop.is_set() and time.monotonic() < end:
                    ready, _, _ = select.select(list(pairs), [], [], 0.5)
                    done = False
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            done = True
                            break
                        other, log = pairs[s]
                        log += data
                        other.sendall(data)
                    if done:
                        break
        self.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)


@pytest.fixture
def forwarder_factory() -> Iterator[list[Forwarder]]:
    made: list[Forwarder] = []
    yield made
    for f in made:
        f.close()


def test_a_relay_in_the_middle_sees_only_ciphertext_and_a_replay_pairs_nobody(
    nodes: tuple[Path, str, Path, str], tmp_path: Path, forwarder_factory: list[Forwarder]
) -> None:
    a, a_id, b, b_id = nodes
    inv = invite(a, "--as", "secretname-nas")
    relay = Forwarder(inv.port)
    forwarder_factory.append(relay)
    run(b, "pair", inv.code, "--from", f"127.0.0.1:{relay.port}", "--as", "secretname-ws", "--yes")
    assert inv.finish()[0] == 0
    relay.close()
    seen = bytes(relay.upstream + relay.downstream)
    assert len(relay.upstream) > 100 and len(relay.downstream) > 100
    for word in [*inv.code.split("-")[1:], "secretname", "publish"]:
        assert word.encode() not in seen, word
    # Replay everything the joiner sent to a new invitation (same home, so
    # the same inviter key): the Noise handshake fails, nothing is spent.
    again = invite(a)
    with socket.create_connection(("127.0.0.1", again.port), 10) as s:
        s.sendall(bytes(relay.upstream))
        s.settimeout(DEADLINE)
        while s.recv(65536):
            pass  # the inviter hangs up on the replay
    c, c_id = node(tmp_path, "C")
    run(c, "pair", again.code, "--from", f"127.0.0.1:{again.port}", "--yes")
    assert again.finish()[0] == 0
    assert set(trusted(a)) == {b_id, c_id}
    assert [(peer, roles) for peer, (_, roles) in trusted(c).items()] == [(a_id, ["publish"])]


def test_an_unused_code_expires(nodes: tuple[Path, str, Path, str]) -> None:
    a, _, _, _ = nodes
    started = time.monotonic()
    rc, _, err = invite(a, "--expires", "1").finish()
    assert rc == 5 and "expired" in err
    assert time.monotonic() - started < DEADLINE
    assert trusted(a) == {}


def test_bad_codes_and_mixed_flags_are_usage_errors(nodes: tuple[Path, str, Path, str]) -> None:
    _, _, b, _ = nodes
    bad = run(b, "pair", "7-orbit-nothing-velvet", "--from", "127.0.0.1:9", check=False)
    assert bad.returncode == 2 and "not a code word" in bad.stderr
    mixed = run(b, "pair", "7-orbit-lantern-velvet", "--role", "push", check=False)
    assert mixed.returncode == 2 and "for inviting" in mixed.stderr
    unasked = run(b, "pair", "7-orbit-lantern-velvet", "--from", "127.0.0.1:9", check=False)
    assert unasked.returncode == 2 and "--yes" in unasked.stderr  # no terminal to ask at


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_joiner_finds_the_inviter_on_the_lan_by_the_codes_number(tmp_path: Path) -> None:
    """Two namespaces on one bridged LAN: no address is typed, mDNS finds
    the invitation by its number (and only its number crosses the LAN)."""
    from tests.e2e.netns import lan

    with lan() as net:
        a, b = tmp_path / "A", tmp_path / "B"
        a_id, b_id = run(a, "init").stdout.strip(), run(b, "init").stdout.strip()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.a, *CLI, "--home", str(a), "pair", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
            assert ready, "the inviter printed no code"
            code = json.loads(proc.stdout.readline())["code"]
            joined = run(b, "pair", code, "--yes", prefix=["ip", "netns", "exec", net.b])
            out, err = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["paired"] == b_id
        assert a_id in joined.stdout
        assert list(trusted(a)) == [b_id] and list(trusted(b)) == [a_id]


def test_pairing_through_a_relay_by_the_codes_number_alone(
    nodes: tuple[Path, str, Path, str], tmp_path: Path
) -> None:
    from tests.e2e.nodes import start_relay

    a, a_id, b, b_id = nodes
    relay = start_relay(tmp_path, tmp_path / "relay.log")
    try:
        inv = invite(a, "--relay", relay.addr)
        assert inv.proc.stderr is not None
        found, seen = read_until(inv.proc.stderr, "waiting at relay", DEADLINE)
        assert found, f"the inviter never reached the relay: {seen}"
        joined = run(b, "pair", inv.code, "--relay", relay.addr, "--no-mdns", "--yes")
        rc, lines, err = inv.finish()
    finally:
        relay.stop()
    assert rc == 0, err
    assert lines[-1]["paired"] == b_id and a_id in joined.stdout
    assert list(trusted(a)) == [b_id] and list(trusted(b)) == [a_id]


def test_a_stranger_cannot_end_an_invitation_without_trying_the_code(
    nodes: tuple[Path, str, Path, str],
) -> None:
    """Anyone may complete the handshake; one who then says "error" before
    any Hello has tried nothing, and the invitation goes on."""
    import struct

    import trio

    from p2pckpt.channel.stream import open_secure
    from p2pckpt.errors import P2pckptError
    from p2pckpt.identity.keys import NodeKey
    from p2pckpt.pairing.core import error

    a, _, b, b_id = nodes
    inv = invite(a)

    async def stranger() -> None:
        with trio.fail_after(DEADLINE):
            tcp = await trio.open_tcp_stream("127.0.0.1", inv.port)
            async with tcp:
                secure = await open_secure(tcp, NodeKey.generate(), initiator=True)
                msg = error("go away")
                await secure.send_all(struct.pack(">H", len(msg)) + msg)
                try:
                    while len(await secure.receive_some()):
                        pass  # until the inviter hangs up on us
                except P2pckptError:
                    pass

    trio.run(stranger)
    run(b, "pair", inv.code, "--from", f"127.0.0.1:{inv.port}", "--yes")
    rc, lines, err = inv.finish()
    assert rc == 0, err
    assert lines[-1]["paired"] == b_id
