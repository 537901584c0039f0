"""Issue 19, papercuts, through real ``p2pckpt`` processes: units on rates,
DEST as ``cp`` takes it, ``--relay`` on pull and ls, ``--config`` as an
overlay, unique trust names, ``init --force``, and custom meta end to end."""

from __future__ import annotations

import os
import subprocess

from tests.e2e.nodes import (
    Pair,
    make_checkpoint,
    run,
    run_json,
    same_tree,
    start_server,
    wait_until,
)


def test_trust_add_refuses_a_name_taken(pair: Pair) -> None:
    """Two peers cannot share a name: the second add exits 2 naming the holder,
    and the store is unchanged."""
    other = pair.root / "C"
    c_id = run(other, "init").stdout.strip()
    proc = run(pair.a, "trust", "add", c_id, "--name", "b", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "already given to" in proc.stderr and pair.b_id in proc.stderr
    assert [p["id"] for p in run_json(pair.a, "trust", "ls")] == [pair.b_id]


def test_max_rate_takes_units(pair: Pair) -> None:
    """--max-rate 10M is accepted (10 MB/s) and the pull completes; a bad unit exits 2."""
    make_checkpoint(pair.root / "ck", {"w.bin": 300_000})
    run(pair.a, "publish", str(pair.root / "ck"), "--name", "m")
    server = pair.serve_a()
    dest = pair.root / "out"
    run(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest), "--max-rate", "10M")
    assert (dest / "w.bin").stat().st_size == 300_000
    bad = run(pair.b, "pull", "m", "--from", server.addr, "--max-rate", "10X", check=False)
    assert bad.returncode == 2 and "not a size" in bad.stderr


TYPED = """
import sys, dataclasses, p2pckpt
r = p2pckpt.publish(sys.argv[1], name="typed", home=sys.argv[2],
                    meta={"loss": 0.31, "epoch": 3, "final": True, "base_model": "llama"})
print(type(r).__name__, dataclasses.is_dataclass(r), r.name, r.version, r.files, r.bytes, r.root)
print("publish" in dir(p2pckpt), "pull" in dir(p2pckpt))
"""


def test_typed_meta_from_python_reaches_ls_and_ls_peer(pair: Pair) -> None:
    """The API's publish takes numbers and bools and returns a plain result;
    `ls --json` shows them typed here and on a peer (`ls --peer`), where the
    whole signed meta travels, CLI `--meta` strings included."""
    import subprocess
    import sys

    make_checkpoint(pair.root / "ck", {"w.safetensors": 1000})
    out = subprocess.run(
        [sys.executable, "-c", TYPED, str(pair.root / "ck"), str(pair.a)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out[:6] == ["PublishResult", "True", "typed", "1", "1", "1000"]
    assert len(out[6]) == 64 and out[7:] == ["True", "True"]
    make_checkpoint(pair.root / "ck2", {"x.bin": 10})
    run(pair.a, "publish", str(pair.root / "ck2"), "--name", "cli", "--meta", "loss=0.31")
    want = {"loss": 0.31, "epoch": 3, "final": True, "base_model": "llama", "format": "safetensors"}
    (local,) = [r for r in run_json(pair.a, "ls", "--local") if r["name"] == "typed"]
    assert local["meta"] == want
    server = pair.serve_a()
    offered = {r["name"]: r for r in run_json(pair.b, "ls", "--peer", server.addr)}
    assert offered["typed"]["meta"] == want
    assert offered["cli"]["meta"]["loss"] == "0.31"
    table = run(pair.b, "ls", "--peer", server.addr).stdout
    typed_line = next(line for line in table.splitlines() if line.startswith("typed@1"))
    assert "llama" in typed_line and "epoch=3" in typed_line and "loss=0.31" in typed_line
    assert "p2pckpt.types" not in table


def test_pull_and_ls_take_relay(pair: Pair) -> None:
    """`ls --relay` and `pull --relay` reach a peer known only by its ID through
    that relay (B's config names no relay); without the flag it is unreachable."""
    from tests.e2e.nodes import start_relay, start_server

    relay = start_relay(pair.root, pair.root / "relay.log")
    pair.servers.append(relay)
    make_checkpoint(pair.root / "ck", {"w.bin": 200_000})
    run(pair.a, "publish", str(pair.root / "ck"), "--name", "m")
    server = start_server(pair.a, pair.root / "a.log", extra=("--no-mdns", "--relay", relay.addr))
    pair.servers.append(server)
    alone = run(pair.b, "ls", "--peer", pair.a_id, "--json", check=False)
    assert alone.returncode == 4, alone.stderr
    listed = run_json(pair.b, "ls", "--peer", pair.a_id, "--relay", relay.addr)
    assert [(r["name"], r["route"]) for r in listed] == [("m", "relay")]
    dest = pair.root / "out"
    doc = run_json(pair.b, "pull", "m", "--from", pair.a_id, "--relay", relay.addr, "-o", str(dest))
    assert {p["route"] for p in doc["peers"]} == {"relay"}
    assert (dest / "w.bin").stat().st_size == 200_000


def test_config_file_adds_to_the_homes(pair: Pair) -> None:
    """`--config FILE` is laid over HOME/config.toml: the static peer the home's
    config names is still known, and FILE's own mistakes are errors naming it."""
    make_checkpoint(pair.root / "ck", {"w.bin": 1000})
    run(pair.a, "publish", str(pair.root / "ck"), "--name", "m")
    server = pair.serve_a()
    (pair.b / "config.toml").write_text(
        f'[discovery]\nmdns = false\n[[peer]]\nid = "{pair.a_id}"\naddr = ["{server.addr}"]\n'
    )
    extra = pair.root / "extra.toml"
    extra.write_text('[transfer]\ncompress = "off"\n')
    listed = run_json(pair.b, "ls", "--peer", pair.a_id, "--config", str(extra))
    assert [r["name"] for r in listed] == ["m"]
    extra.write_text("[transfer]\ncompres = 1\n")
    bad = run(pair.b, "ls", "--peer", pair.a_id, "--config", str(extra), check=False)
    assert bad.returncode == 2 and "extra.toml" in bad.stderr


def test_init_force_rotates_the_identity_keeping_trust(pair: Pair) -> None:
    """`init --force` asks first (refused without a terminal unless --yes);
    with --yes it makes a new peer ID, keeps the trust store and catalog, and
    says what peers must do."""
    make_checkpoint(pair.root / "ck", {"w.bin": 100})
    run(pair.a, "publish", str(pair.root / "ck"), "--name", "m")
    refused = run(pair.a, "init", "--force", check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert run(pair.a, "id").stdout.strip() == pair.a_id
    rotated = run(pair.a, "init", "--force", "--yes")
    new_id = rotated.stdout.strip()
    assert new_id != pair.a_id and run(pair.a, "id").stdout.strip() == new_id
    assert f"trust add {new_id}" in rotated.stderr and pair.a_id in rotated.stderr
    assert [p["id"] for p in run_json(pair.a, "trust", "ls")] == [pair.b_id]
    (row,) = run_json(pair.a, "ls", "--local")
    assert (row["name"], row["publisher"]) == ("m", pair.a_id)
    assert run(pair.a, "init").stdout.strip() == new_id  # plain init: idempotent


def test_dest_is_taken_as_cp_takes_it(pair: Pair) -> None:
    """An existing empty directory is a valid DEST (it becomes the checkpoint);
    `-o DIR/` naming a directory that holds something else means DIR/NAME, and
    again (DIR/NAME now ours) updates DIR/NAME; without the slash such a DIR is
    refused (exit 2, untouched); a one-file checkpoint goes inside a directory."""
    ck = make_checkpoint(pair.root / "ck", {"a.bin": 5000, "sub/b.bin": 3000})
    run(pair.a, "publish", str(ck), "--name", "m")
    single = pair.root / "one.bin"
    single.write_bytes(b"x" * 1234)
    run(pair.a, "publish", str(single), "--name", "f")
    server = pair.serve_a()

    empty = pair.root / "empty"
    empty.mkdir()
    run(pair.b, "pull", "m", "--from", server.addr, "-o", str(empty))
    assert same_tree(ck, empty)

    busy = pair.root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = run(pair.b, "pull", "m", "--from", server.addr, "-o", str(busy), check=False)
    assert refused.returncode == 2, refused.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", f"{busy}/")
    assert doc["dest"] == str(busy / "m")
    assert same_tree(ck, busy / "m") and (busy / "notes.txt").read_text() == "mine"
    again = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", f"{busy / 'm'}/")
    assert again["dest"] == str(busy / "m")

    fresh = pair.root / "fresh"
    doc = run_json(pair.b, "pull", "m", "--from", server.addr, "-o", f"{fresh}/")
    assert doc["dest"] == str(fresh) and same_tree(ck, fresh)

    doc = run_json(pair.b, "pull", "f", "--from", server.addr, "-o", str(busy))
    assert doc["dest"] == str(busy / "one.bin")
    assert (busy / "one.bin").read_bytes() == single.read_bytes()


def test_daemon_no_mdns_overrides_the_config(pair: Pair) -> None:
    """`daemon --no-mdns` (as `serve --no-mdns`) keeps a home whose config
    announces on the LAN quiet. Run in a namespace of its own holding only
    loopback, so a broken flag could not reach the host's LAN either."""
    home = pair.root / "N"
    run(home, "init")  # its config: mDNS on, the default
    ns = f"p2pt-nomdns-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=20)
        daemon = start_server(
            home,
            pair.root / "n.log",
            command=("daemon",),
            extra=("--no-mdns",),
            prefix=["ip", "netns", "exec", ns],
            banner=r"daemon listening on [0-9.]+:(\d+)",
        )
        try:
            wait_until(lambda: "node peer_id=" in daemon.log.read_text(), 30, "the daemon's line")
            assert "mdns=off" in daemon.log.read_text()
        finally:
            daemon.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
