"""Server-side limits and live configuration, against a real `serve` process."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from pathlib import Path

from p2pckpt.transfer.admission import MAX_PREAUTH_PER_SOURCE
from tests.e2e.nodes import Pair, run, run_json


def test_trust_changes_apply_without_restart(pair: Pair, tmp_path: Path) -> None:
    """`trust rm` / `trust add` on a running seeder take effect on the next connection."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(50_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    run(pair.a, "trust", "rm", pair.b_id)
    refused = run(
        pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "x"), check=False
    )
    assert refused.returncode == 5, refused.stderr
    run(pair.a, "trust", "add", pair.b_id, "--role", "pull")
    doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "y"))
    assert doc["bytes_downloaded"] == 50_000


def test_connection_flood_is_dropped_before_any_handshake(pair: Pair, tmp_path: Path) -> None:
    """Beyond the per-source burst, connections are closed at once; the server lives on."""
    f = tmp_path / "m.pt"
    f.write_bytes(os.urandom(10_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    socks = []
    try:
        for _ in range(80):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        # Refused connections are closed at once; admitted ones wait 10 s for
        # a handshake. Count what closes within 8 s (or until all refused did).
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + 8
        while len(closed) < 80 - MAX_PREAUTH_PER_SOURCE and time.monotonic() < deadline:
            ready, _, _ = select.select(
                [s for s in socks if s not in closed], [], [], deadline - time.monotonic()
            )
            for s in ready:
                try:
                    got = s.recv(16)
                    if got == b"":
                        closed.add(s)
                    else:  # refused ones are told "busy" (an empty frame), then closed
                        assert got in (b"\x00\x00", b"\x00")
                except ConnectionResetError:
                    closed.add(s)
        # However fast tokens refill, at most 8 connections from one source
        # may be waiting for a handshake: all the others are closed.
        assert len(closed) == 80 - MAX_PREAUTH_PER_SOURCE
        waiting = [s for s in socks if s not in closed]
        assert select.select(waiting, [], [], 0.2)[0] == []  # still open, in handshake
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 30
    while True:  # tokens refill at 20/s: the next honest pull goes through
        proc = run(
            pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "m2"), check=False
        )
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
    assert proc.returncode == 0, proc.stderr
    assert server.alive()
    assert "dropping connections from=127.0.0.1 " in server.log.read_text()


def test_serving_bandwidth_limit_applies(pair: Pair, tmp_path: Path) -> None:
    """[limits] upload caps what serve sends (a lower bound on the time taken)."""
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(12 << 20))
    run(pair.a, "publish", str(f), "--name", "m")
    (pair.a / "config.toml").write_text("[discovery]\nmdns = false\n[limits]\nupload = 4000000\n")
    server = pair.serve_a()
    started = time.monotonic()
    run(pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "got"))
    # 12.6 MB at 4 MB/s, minus the 0.25 s burst allowance.
    assert time.monotonic() - started >= (12 << 20) / 4_000_000 - 0.3
    assert (tmp_path / "got").read_bytes() == f.read_bytes()


def test_upload_per_peer_caps_each_peer(pair: Pair, tmp_path: Path) -> None:
    """[limits] upload_per_peer caps what one peer gets, over all its streams."""
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(8 << 20))
    run(pair.a, "publish", str(f), "--name", "m")
    (pair.a / "config.toml").write_text(
        "[discovery]\nmdns = false\n[limits]\nupload_per_peer = 3000000\n"
    )
    server = pair.serve_a()
    started = time.monotonic()
    run(pair.b, "pull", "m", "--from", server.addr, "--streams", "4", "-o", str(tmp_path / "got"))
    # 8.4 MB at 3 MB/s however many streams, minus the 0.25 s burst allowance.
    assert time.monotonic() - started >= (8 << 20) / 3_000_000 - 0.3
    assert (tmp_path / "got").read_bytes() == f.read_bytes()


def test_preauth_slowloris_from_many_addresses_does_not_lock_out_a_pull(
    pair: Pair, tmp_path: Path
) -> None:
    """64 idle sockets from 8 addresses (kept up: each one closed is opened
    again) fill the pre-auth pool; a legitimate pull still gets in within one
    handshake deadline, because a full pool sheds its oldest waiter (R-65)."""
    import threading

    from p2pckpt.channel.stream import HANDSHAKE_TIMEOUT

    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(200_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = pair.serve_a()
    stop = threading.Event()
    opened = [0]

    def attack() -> None:
        socks: list[socket.socket] = []
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for s in list(socks):  # reopen what the server closed
                ready, _, _ = select.select([s], [], [], 0)
                if ready:
                    socks.remove(s)
                    s.close()
            for i in range(8):
                src = f"127.0.0.{2 + i}"
                while sum(1 for s in socks if s.getsockname()[0] == src) < 8:
                    s = socket.socket()
                    s.bind((src, 0))
                    s.settimeout(5)
                    s.connect(("127.0.0.1", server.port))
                    socks.append(s)
                    opened[0] += 1
            stop.wait(0.02)
        for s in socks:
            s.close()

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        deadline = time.monotonic() + 10
        while opened[0] < 64 and time.monotonic() < deadline:
            stop.wait(0.01)
        assert opened[0] >= 64
        started = time.monotonic()
        doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", str(tmp_path / "got"))
        took = time.monotonic() - started
    finally:
        stop.set()
        attacker.join(30)
    assert doc["bytes_downloaded"] == 200_000
    assert took < HANDSHAKE_TIMEOUT
    assert server.alive()


def test_a_stranger_cannot_cut_a_node_off_its_relay(pair: Pair, tmp_path: Path) -> None:
    """Knowing only A's public ID, a stranger keeps idle relayed sessions to A
    open (reopening each one closed); B's pull through the relay still
    succeeds: the relay caps sessions per requester, and A counts relayed
    sessions apart from each other and from direct ones (R-65)."""
    import threading

    from p2pckpt.identity.peer_id import PeerId
    from p2pckpt.relay import protocol as p
    from tests.e2e.nodes import start_relay, start_server

    relay = start_relay(pair.root, tmp_path / "relay.log")
    pair.servers.append(relay)
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(300_000))
    run(pair.a, "publish", str(f), "--name", "m")
    server = start_server(pair.a, tmp_path / "a.log", extra=("--no-mdns", "--relay", relay.addr))
    pair.servers.append(server)
    (pair.b / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[relay]\naddr = "{relay.addr}"\n'
    )
    connect = p.encode(p.Connect(PeerId.parse(pair.a_id).key))
    stop = threading.Event()
    opened = [0]

    def attack() -> None:
        socks: list[socket.socket] = []
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for s in list(socks):
                if select.select([s], [], [], 0)[0]:
                    try:
                        if s.recv(65536):
                            continue  # a Connected (or the node's handshake bytes): stay idle
                    except OSError:
                        pass
                    socks.remove(s)
                    s.close()
            while len(socks) < 12:
                s = socket.socket()
                s.bind(("127.0.0.2", 0))
                s.settimeout(5)
                s.connect(("127.0.0.1", relay.port))
                s.sendall(connect)
                socks.append(s)
                opened[0] += 1
            stop.wait(0.05)
        for s in socks:
            s.close()

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        deadline = time.monotonic() + 10
        while opened[0] < 12 and time.monotonic() < deadline:
            stop.wait(0.01)
        # The relay refusing the 9th means 8 idle sessions to A are up.
        while "too many sessions from=127.0.0.2" not in relay.log.read_text():
            assert time.monotonic() < deadline, relay.log.read_text()
            stop.wait(0.01)
        doc = run_json(pair.b, "pull", "m", "--from", pair.a_id, "-o", str(tmp_path / "got"))
    finally:
        stop.set()
        attacker.join(30)
    assert doc["bytes_downloaded"] == 300_000
    assert {peer["route"] for peer in doc["peers"]} == {"relay"}
    assert server.alive()


def test_a_pull_outlives_relay_session_caps(pair: Pair, tmp_path: Path) -> None:
    """A relay that ends every session after 6 MiB does not end the pull: each
    broken connection is dialled again through a new session, and the pull
    completes with every byte verified (issue 14.7)."""
    from tests.e2e.nodes import start_relay, start_server

    relay = start_relay(pair.root, tmp_path / "relay.log", "--session-bytes", str(6 << 20))
    pair.servers.append(relay)
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(20 << 20))
    run(pair.a, "publish", str(f), "--name", "m")
    server = start_server(pair.a, tmp_path / "a.log", extra=("--no-mdns", "--relay", relay.addr))
    pair.servers.append(server)
    (pair.b / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[relay]\naddr = "{relay.addr}"\n'
    )
    got = tmp_path / "got"
    proc = run(pair.b, "-v", "pull", "m", "--from", pair.a_id, "-o", str(got), "--json")
    doc = json.loads(proc.stdout)
    assert doc["bytes_downloaded"] == 20 << 20
    assert got.read_bytes() == f.read_bytes()
    assert proc.stderr.count("redialled peer=") >= 2  # 20 MiB over 6 MiB sessions
    assert "session reached byte cap" in relay.log.read_text()
