"""INFO logs carry events, not polls (issue 19): a follower asking its seeder
every POLL_SECONDS logs nothing at INFO on either side while nothing changes,
and the event that follows (a new version pulled) is logged, with its numbers
as JSON numbers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.nodes import make_checkpoint, run, start_server, wait_until


def test_a_polling_follower_logs_only_changes(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--role", "pull")
    run(b, "trust", "add", a_id, "--name", "nas", "--role", "pull", "--role", "publish")
    (a / "config.toml").write_text("[discovery]\nmdns = false\n")
    seeder_log = tmp_path / "a.log"
    # -v -v: the seeder logs DEBUG too, so each poll can be counted
    seeder = start_server(a, seeder_log, command=("-v", "serve"))
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f'[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[[peer]]\nid = "{a_id}"\naddr = "{seeder.addr}"\n'
        f'[[follow]]\nname = "m"\ndir = "{tmp_path / "models"}"\n'
    )
    follower_log = tmp_path / "b.log"
    follower = start_server(
        b,
        follower_log,
        command=("--log-format", "json", "daemon", "--config", str(cfg)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )
    try:

        def polls() -> list[str]:
            return [
                line for line in seeder_log.read_text().splitlines() if "peer connected" in line
            ]

        wait_until(lambda: len(polls()) >= 4, 60, "four polls of the follower")
        seeder_info = [line for line in polls() if " INFO " in line]
        assert len(seeder_info) == 1, polls()  # the arrival, not every poll
        events = [json.loads(line) for line in follower_log.read_text().splitlines()]
        info = [e for e in events if e["level"] == "info"]
        checks = [e for e in info if e["event"] == "follow check"]
        assert len(checks) == 1, info  # "m not found" said once, not every poll
        skipped = [e for e in info if e["event"] == "peer skipped"]
        assert len(skipped) <= 1, info  # the first round's news, then nothing
        messages = [e["msg"] for e in info]
        assert len(messages) == len(set(messages)), info  # no INFO line twice

        make_checkpoint(tmp_path / "ck", {"w.bin": 40_000})
        run(a, "publish", str(tmp_path / "ck"), "--name", "m")

        def pulled() -> list[dict[str, object]]:
            lines = follower_log.read_text().splitlines()
            return [e for e in map(json.loads, lines) if e["event"] == "pulled"]

        wait_until(lambda: pulled(), 60, "the follower to pull m")
        fields = pulled()[0]["fields"]
        assert isinstance(fields, dict)
        assert fields["version"] == 1 and fields["downloaded"] == 40_000
        assert isinstance(fields["seconds"], float)
    finally:
        follower.stop()
        seeder.stop()
