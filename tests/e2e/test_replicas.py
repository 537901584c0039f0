"""publish --replicas K: return once K trusted followers hold a verified copy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.nodes import Server, make_checkpoint, run, start_server


def _follower(home: Path, tmp: Path, seeder: Server, seeder_id: str) -> Server:
    cfg = tmp / f"{home.name}.toml"
    cfg.write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
[[peer]]
id = "{seeder_id}"
addr = "{seeder.addr}"
[[follow]]
name = "llama-ft"
dir = "{tmp / home.name / "models"}"
"""
    )
    return start_server(
        home,
        tmp / f"{home.name}.log",
        command=("daemon", "--config", str(cfg)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )


def _publisher_config(tmp: Path, peers: dict[str, Server]) -> Path:
    cfg = tmp / "a.toml"
    cfg.write_text(
        "[discovery]\nmdns = false\n"
        + "".join(f'[[peer]]\nid = "{pid}"\naddr = "{s.addr}"\n' for pid, s in peers.items())
    )
    return cfg


def _held(home: Path, version: int) -> bool:
    rows = json.loads(run(home, "ls", "--local", "--json").stdout)
    return any(r["name"] == "llama-ft" and r["version"] == version for r in rows)


def test_replicas_wait_for_both_followers(tmp_path: Path) -> None:
    """With one follower down, --replicas 2 times out (exit 13) naming who holds
    it and who is unreachable; with both up it returns once both hold it."""
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    ids = {h.name: run(h, "init").stdout.strip() for h in (a, b, c)}
    for follower in (b, c):
        run(
            a,
            "trust",
            "add",
            ids[follower.name],
            "--name",
            follower.name.lower(),
            "--role",
            "pull",
            "--role",
            "publish",
            "--role",
            "push",
        )
        run(
            follower,
            "trust",
            "add",
            ids["A"],
            "--name",
            "trainer",
            "--role",
            "pull",
            "--role",
            "publish",
            "--role",
            "push",
        )
    servers: list[Server] = []
    try:
        seeder = start_server(a, tmp_path / "a.log")
        servers.append(seeder)
        fb = _follower(b, tmp_path, seeder, ids["A"])
        fc = _follower(c, tmp_path, seeder, ids["A"])
        servers += [fb, fc]
        cfg = _publisher_config(tmp_path, {ids["B"]: fb, ids["C"]: fc})
        fc.stop()  # C is down

        ck1 = make_checkpoint(tmp_path / "ck1", {"model.safetensors": 3 << 20}, seed=1)
        started = time.monotonic()
        out = run(
            a, "publish", str(ck1), "--name", "llama-ft", "--replicas", "2",
            "--replicas-timeout", "6", "--config", str(cfg), "--json", check=False,
        )  # fmt: skip
        took = time.monotonic() - started
        assert out.returncode == 13, out.stderr
        assert 6 <= took < 20
        doc = json.loads(out.stdout)
        assert doc["replicas"]["holding"] == [ids["B"]]
        assert doc["replicas"]["peers"][ids["C"]].startswith("unreachable")
        message = out.stderr.strip().splitlines()[-1]
        assert "1 of 2 replica(s) of llama-ft@1" in message
        assert "held by b (" in message and "c (" in message and "unreachable" in message
        assert _held(b, 1) and not _held(c, 1)

        fc = _follower(c, tmp_path, seeder, ids["A"])  # C is back (on a new port)
        servers.append(fc)
        cfg = _publisher_config(tmp_path, {ids["B"]: fb, ids["C"]: fc})
        ck2 = make_checkpoint(tmp_path / "ck2", {"model.safetensors": 3 << 20}, seed=2)
        out = run(
            a, "publish", str(ck2), "--name", "llama-ft", "--replicas", "2",
            "--replicas-timeout", "60", "--config", str(cfg),
        )  # fmt: skip
        assert _held(b, 2) and _held(c, 2)  # both held it when publish returned
        assert "safe on 2 of 2 replica(s) of llama-ft@2" in out.stdout
        assert out.stderr.count("holds it") == 2

        # The Python API, as a training job calls it.
        ck3 = make_checkpoint(tmp_path / "ck3", {"model.safetensors": 1 << 20}, seed=3)
        script = (
            "import sys, p2pckpt\n"
            "m = p2pckpt.publish(sys.argv[1], name='llama-ft', home=sys.argv[2], replicas=2,"
            " replicas_timeout=60, config=sys.argv[3])\n"
            "print(m.version)\n"
        )
        api = subprocess.run(
            [sys.executable, "-c", script, str(ck3), str(a), str(cfg)],
            capture_output=True, text=True, timeout=90, check=True,
        )  # fmt: skip
        assert api.stdout.strip() == "3" and _held(b, 3) and _held(c, 3)

        nobody = run(
            a, "publish", str(ck2), "--name", "llama-ft", "--replicas", "3",
            "--config", str(cfg), check=False,
        )  # fmt: skip
        assert (
            nobody.returncode == 2 and "only 2 trusted peer(s) have the pull role" in nobody.stderr
        )
    finally:
        for s in servers:
            s.stop()
