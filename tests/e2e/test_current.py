"""A follower an inference server can use, with real daemons: `current` of
a one-file checkpoint is the file; `p2pckpt current` pins, unpins and rolls
back (through a running daemon, and with none), each switch running the
hook; `status` shows each follow and watch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.e2e.nodes import Server, run, start_daemon, wait_until


def _status(home: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(run(home, "status", "--json").stdout)  # type: ignore[no-any-return]


def test_pin_unpin_rollback_on_a_running_follower(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--name", "nas", "--role", "publish")
    watched, models = tmp_path / "ckpt", tmp_path / "models"
    watched.mkdir()
    a_cfg = tmp_path / "a.toml"
    a_cfg.write_text(
        '[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[[watch]]\npath = "{watched}"\nname = "m"\nstable_seconds = 0.3\n'
    )
    servers: list[Server] = []
    try:
        seeder = start_daemon(a, tmp_path / "a.log", a_cfg)
        servers.append(seeder)
        hook_out = tmp_path / "hook.log"
        hook = tmp_path / "hook.sh"
        hook.write_text(f'#!/bin/sh\necho "$P2PCKPT_VERSION $P2PCKPT_PATH" >> {hook_out}\n')
        hook.chmod(0o755)
        b_cfg = tmp_path / "b.toml"
        b_cfg.write_text(
            '[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
            f'[[peer]]\nid = "{a_id}"\naddr = "{seeder.addr}"\n'
            f'[[follow]]\nname = "m"\ndir = "{models}"\nkeep = 5\nhook = ["{hook}"]\n'
        )
        follower = start_daemon(b, tmp_path / "b.log", b_cfg)
        servers.append(follower)
        root = models / "m"
        current = root / "current"
        data: dict[int, bytes] = {}

        def hooks() -> list[str]:
            return hook_out.read_text().splitlines() if hook_out.exists() else []

        def publish(version: int) -> None:
            data[version] = os.urandom(200_000 + version)
            tmp = tmp_path / f"m-step{version}.pt"
            tmp.write_bytes(data[version])
            tmp.rename(watched / tmp.name)  # whole at once: the watcher publishes it

        for version in (1, 2):
            publish(version)
            wait_until(
                lambda v=version: f"{v} " in "".join(hooks()), 30, f"version {version} hooked"
            )
        # A one-file checkpoint: `current` is the file itself, at a stable path.
        assert os.readlink(current) == "2/m-step2.pt"
        assert current.is_file() and current.read_bytes() == data[2]
        assert hooks() == [f"1 {root}/1/m-step1.pt", f"2 {root}/2/m-step2.pt"]

        back = json.loads(run(b, "current", "m", "--rollback", "--json").stdout)
        assert (back["current"], back["pinned"], back["switched"]) == (1, 1, True)
        assert back["hook"]["code"] == 0 and back["hook"]["version"] == 1
        assert os.readlink(current) == "1/m-step1.pt" and current.read_bytes() == data[1]
        assert hooks()[-1] == f"1 {root}/1/m-step1.pt"
        assert (root / ".pinned").read_text().strip() == "1"

        publish(3)  # pulled and kept, but current stays pinned
        wait_until(lambda: _status(b)["follows"][0]["last_version"] == 3, 30, "version 3 kept")
        assert (root / "3" / "m-step3.pt").read_bytes() == data[3]
        assert os.readlink(current) == "1/m-step1.pt"
        assert len(hooks()) == 3 and not hooks()[-1].startswith("3 ")
        assert "kept name=m version=3 (current is pinned at 1)" in follower.log.read_text()

        pinned = json.loads(run(b, "current", "m", "--pin", "2", "--json").stdout)
        assert (pinned["current"], pinned["pinned"], pinned["kept"]) == (2, 2, [1, 2, 3])
        assert os.readlink(current) == "2/m-step2.pt" and hooks()[-1] == f"2 {root}/2/m-step2.pt"
        missing = run(b, "current", "m", "--pin", "99", check=False)
        assert missing.returncode == 3 and "not kept" in missing.stderr
        unknown = run(b, "current", "nope", check=False)
        assert unknown.returncode == 3 and "does not follow" in unknown.stderr
        both = run(b, "current", "m", "--pin", "1", "--unpin", check=False)
        assert both.returncode == 2
        assert os.readlink(current) == "2/m-step2.pt"  # refusals moved nothing
        # A kept copy edited in place (kept copies share files by hard link)
        # is not switched to: exit 9, current stays.
        edited = root / "1" / "m-step1.pt"
        with open(edited, "r+b") as f:
            f.write(b"\0")
        stamp = time.time() + 5
        os.utime(edited, (stamp, stamp))  # however coarse the clock: the edit shows
        damaged = run(b, "current", "m", "--pin", "1", check=False)
        assert damaged.returncode == 9 and "not switching" in damaged.stderr, damaged.stderr
        assert os.readlink(current) == "2/m-step2.pt" and hooks()[-1] == f"2 {root}/2/m-step2.pt"

        released = run(b, "current", "m", "--unpin").stdout
        assert released.splitlines() == [
            "m: current 3; kept: 1, 2, 3",
            "hook for version 3: exit 0",
        ]
        assert os.readlink(current) == "3/m-step3.pt" and current.read_bytes() == data[3]
        assert not (root / ".pinned").exists()
        assert hooks()[-1] == f"3 {root}/3/m-step3.pt"

        (follow,) = _status(b)["follows"]
        assert (follow["name"], follow["current"], follow["pinned"]) == ("m", 3, None)
        assert follow["last_version"] == 3 and follow["dir"] == str(root)
        assert (follow["hook"]["version"], follow["hook"]["code"]) == (3, 0)
        assert time.time() - 60 < follow["hook"]["at"] <= time.time()
        text = run(b, "status").stdout
        assert "follows (1):" in text and "last hook: version 3 exit 0" in text
        (watch,) = _status(a)["watches"]
        assert (watch["name"], watch["path"], watch["last_version"]) == ("m", str(watched), 3)
        assert watch["last_error"] == ""
        assert "watches (1):" in run(a, "status").stdout

        # With no daemon, the switch happens directly on the follow's folder.
        follower.stop()
        direct = json.loads(
            run(b, "current", "m", "--rollback", "--config", str(b_cfg), "--json").stdout
        )
        assert (direct["current"], direct["pinned"], direct["hook"]["code"]) == (2, 2, 0)
        assert os.readlink(current) == "2/m-step2.pt" and hooks()[-1] == f"2 {root}/2/m-step2.pt"
        assert follower.log.read_text().count("hook exited") == 5  # 1, 2, rollback, pin, unpin
    finally:
        for s in servers:
            s.stop()
