"""`--json` output as scripts see it (issue 19), through real processes.

* docs/json.md cannot drift: every command is run with ``--json`` and the
  keys it prints are compared with the tables there, nested objects too;
* a failure under ``--json`` is one ``{"error": ...}`` document on stdout,
  with the exit code the command has without ``--json``;
* ``--quiet`` leaves errors and what was asked for, nothing else;
* ``status --json`` names the peers of a transfer in flight.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.nodes import CLI, Pair, make_checkpoint, run, start_server, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"
_HEADING = re.compile(r"^#{2,4} `([^`]+)`\s*$")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|")


def documented() -> dict[str, tuple[set[str], set[str]]]:
    """Each table of docs/json.md: path -> (required keys, optional keys)."""
    tables: dict[str, tuple[set[str], set[str]]] = {}
    current: str | None = None
    for line in DOC.read_text().splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading[1]
            tables[current] = (set(), set())
            continue
        row = _ROW.match(line)
        if row and current is not None:
            key, kind = row[1], row[2]
            tables[current][1 if "optional" in kind else 0].add(key)
    return {path: keys for path, keys in tables.items() if keys[0] or keys[1]}


class Checker:
    """Compares printed documents with the tables, and notes which were seen."""

    def __init__(self) -> None:
        self.tables = documented()
        self.seen: set[str] = set()

    def check(self, path: str, value: Any) -> None:
        """``value`` printed at ``path`` (``pull``, ``ls[]``, ...): its keys are
        documented, every required key is there, and nested objects with a
        table of their own are checked too."""
        if path.endswith("[]"):
            assert isinstance(value, list), (path, value)
            for item in value:
                self.check_object(path, item)
        else:
            self.check_object(path, value)

    def check_object(self, path: str, doc: Any) -> None:
        assert isinstance(doc, dict), (path, doc)
        assert path in self.tables, f"docs/json.md has no table for {path}"
        required, optional = self.tables[path]
        keys = set(doc)
        assert keys <= required | optional, f"{path}: undocumented {keys - required - optional}"
        assert required <= keys, f"{path}: documented but not printed {required - keys}"
        self.seen.add(path)
        for key, value in doc.items():
            for nested in (f"{path}.{key}", f"{path}.{key}[]"):
                if nested in self.tables and value is not None:  # "object or null"
                    self.check(nested, value)
            if f"{path}.{key}.*" in self.tables:
                assert isinstance(value, dict)
                for item in value.values():
                    self.check_object(f"{path}.{key}.*", item)
        if path != "error" and isinstance(doc.get("error"), dict):  # a hook's error is a str
            self.check_object("error", doc["error"])


def json_of(proc: subprocess.CompletedProcess[str]) -> Any:
    """The one document on stdout."""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_every_json_document_matches_docs_json_md(pair: Pair, tmp_path: Path) -> None:
    """Run every command with --json, successes and failures, and check each
    document against docs/json.md; every table there is exercised."""
    c = Checker()
    (pair.a / "config.toml").write_text('[discovery]\nmdns = false\n[limits]\nupload = "200K"\n')
    ck = make_checkpoint(tmp_path / "ck", {"a.bin": 4000, "sub/b.bin": 3000})
    c.check("publish", json_of(run(pair.a, "publish", str(ck), "--name", "m", "--json")))
    waited = run(
        pair.a, "publish", str(ck), "--name", "m", "--replicas", "1",
        "--replicas-timeout", "0.5", "--json", check=False,
    )  # fmt: skip
    assert waited.returncode == 13, waited.stderr
    doc = json_of(waited)
    assert doc["error"]["code"] == 13 and "replicas" in doc
    c.check("publish", doc)
    c.check("trust ls[]", json_of(run(pair.a, "trust", "ls", "--json")))
    c.check("ls[]", json_of(run(pair.a, "ls", "--local", "--json")))
    server = pair.serve_a()
    offered = json_of(run(pair.b, "ls", "--peer", server.addr, "--json"))
    assert [r["route"] for r in offered] == ["direct"]
    c.check("ls[]", offered)
    dest = tmp_path / "got"
    c.check(
        "pull", json_of(run(pair.b, "pull", "m", "--from", server.addr, "-o", str(dest), "--json"))
    )
    c.check("verify", json_of(run(pair.b, "verify", str(dest), "--json")))
    (dest / "a.bin").write_bytes(b"\0" * 4000)
    damaged = run(pair.b, "verify", str(dest), "--json", check=False)
    assert damaged.returncode == 9
    assert json_of(damaged)["ok"] is False
    c.check("verify", json_of(damaged))
    missing = run(pair.b, "pull", "nope", "--from", server.addr, "--json", check=False)
    assert missing.returncode == 3
    c.check("error", json_of(missing)["error"])
    # A look inside, a dry run, and a selective pull (issue 19).
    c.check(
        "ls --files", json_of(run(pair.b, "ls", "m", "--files", "--peer", server.addr, "--json"))
    )
    part = tmp_path / "part"
    c.check(
        "pull --dry-run",
        json_of(run(pair.b, "pull", "m", "--from", server.addr, "-o", str(part), "--dry-run",
                    "--json")),
    )  # fmt: skip
    picked = json_of(
        run(pair.b, "pull", "m", "--from", server.addr, "-o", str(part), "--include", "a.bin",
            "--json")
    )  # fmt: skip
    assert picked["selection"] == ["a.bin"]
    c.check("pull", picked)
    c.check("verify", json_of(run(pair.b, "verify", str(part), "--json")))
    inside = json_of(run(pair.b, "ls", "m", "--files", "--local", "--json"))
    c.check("ls --files", inside)
    c.check("ls[]", json_of(run(pair.b, "ls", "--local", "--json")))

    # The daemon: a follower pulling a big version slowly (A uploads 200 kB/s,
    # so the pull lasts ~15 s: wide enough for a status call under load to see
    # it; nothing below waits for it to end)
    big = make_checkpoint(tmp_path / "big", {"w.bin": 3_000_000}, seed=2)
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f'[serve]\nlisten = "127.0.0.1:0"\n[[peer]]\nid = "{pair.a_id}"\naddr = "{server.addr}"\n'
        f'[[follow]]\nname = "big"\ndir = "{tmp_path / "models"}"\n'
        f'[[follow]]\nname = "m"\ndir = "{tmp_path / "models"}"\nhook = ["true"]\n'
        f'[[watch]]\nname = "w"\npath = "{tmp_path / "watched"}"\n'
    )
    (tmp_path / "watched").mkdir()
    daemon = start_server(
        pair.b,
        tmp_path / "b.log",
        command=("daemon", "--config", str(cfg)),
        extra=(),
        banner=r"daemon listening on [0-9.]+:(\d+)",
    )
    pair.servers.append(daemon)
    run(pair.a, "publish", str(big), "--name", "big")

    def in_flight() -> Any:
        doc = json_of(run(pair.b, "status", "--json"))
        moving = [t for t in doc["transfers"] if t["name"] == "big" and t["peers"]]
        return doc if moving else None

    status = wait_until(in_flight, 60, "status to show the pull of big with its peers")
    (transfer,) = [t for t in status["transfers"] if t["name"] == "big"]
    assert [p["id"] for p in transfer["peers"]] == [pair.a_id]
    assert transfer["peers"][0]["route"] == "direct"
    c.check("status", status)
    paused = json_of(run(pair.b, "pause", "big", "--json"))
    assert paused == {"name": "big", "paused": True, "changed": True}
    c.check("pause", paused)
    held = json_of(run(pair.b, "status", "--json"))
    assert [f["paused"] for f in held["follows"] if f["name"] == "big"] == [True]
    assert all(t["paused"] for t in held["transfers"] if t["name"] == "big")
    c.check("pause", json_of(run(pair.b, "resume", "big", "--json")))
    pushed = run(pair.a, "push", "m", "--to", daemon.addr, "--json", check=False)
    assert pushed.returncode == 0, pushed.stderr
    c.check("push", json_of(pushed))
    c.check("push --dry-run", json_of(run(pair.a, "push", "m", "--to", daemon.addr, "--dry-run",
                                          "--json")))  # fmt: skip

    (ck / "a.bin").write_bytes(b"\2" * 4000)
    run(pair.a, "publish", str(ck), "--name", "m")  # m@2: the follower moves to it

    def hooked() -> Any:
        doc = json_of(run(pair.b, "status", "--json"))
        done = [f for f in doc["follows"] if f["name"] == "m" and f["current"] == 2 and f["hook"]]
        return doc if done else None

    c.check("status", wait_until(hooked, 60, "the follower of m to install m@2 and run its hook"))
    pinned = json_of(run(pair.b, "current", "m", "--pin", "1", "--json"))
    assert pinned["switched"] and pinned["hook"]["code"] == 0, pinned
    c.check("current", pinned)
    # Retiring what was published (issue 19).
    c.check("unpublish", json_of(run(pair.a, "unpublish", "m@1", "--json")))
    (part / "a.bin").write_bytes(b"\1" * 4000)
    c.check("gc", json_of(run(pair.b, "gc", "--dry-run", "--json")))
    # Pairing by a code (issue 19): the inviter's two documents, the joiner's one.
    c_home = tmp_path / "C"
    run(c_home, "init")
    inviter = subprocess.Popen(
        [*CLI, "--home", str(pair.a), "pair", "--listen", "127.0.0.1:0", "--no-mdns", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert inviter.stdout is not None
    first = json.loads(inviter.stdout.readline())
    c.check("pair (code)", first)
    joined = run(c_home, "pair", first["code"], "--from", f"127.0.0.1:{first['port']}",
                 "--no-mdns", "--yes", "--json")  # fmt: skip
    c.check("pair", json_of(joined))
    out, err = inviter.communicate(timeout=60)
    assert inviter.returncode == 0, err
    c.check("pair", json.loads(out.splitlines()[-1]))

    assert c.seen == set(c.tables), f"tables never printed: {set(c.tables) - c.seen}"


def test_failures_under_json_are_one_error_document(pair: Pair, tmp_path: Path) -> None:
    """The same exit code with and without --json; with it, stdout is one
    {"error": {code, kind, message}} and the message is on stderr too."""
    server = pair.serve_a()
    cases = [
        (("pull", "nope", "--from", server.addr), 3, "NotFound"),
        (("pull", "m", "--streams", "99"), 2, "UsageError"),
        (("ls", "--peer", "127.0.0.1:1"), 4, "PeerUnreachable"),
        (("status",), 11, "DaemonNotRunning"),
        (("verify", str(tmp_path / "nothing")), 3, "NotFound"),
        (("trust", "ls", "--bogus"), 2, "UsageError"),
    ]
    for args, code, kind in cases:
        plain = run(pair.b, *args, check=False)
        assert plain.returncode == code, (args, plain.stderr)
        assert plain.stdout == "", (args, plain.stdout)
        proc = run(pair.b, *args, "--json", check=False)
        assert proc.returncode == code, (args, proc.stderr)
        doc = json_of(proc)
        assert set(doc) == {"error"}, doc
        assert doc["error"]["code"] == code and doc["error"]["kind"] == kind, (args, doc)
        assert doc["error"]["message"] and doc["error"]["message"] in proc.stderr


def test_quiet_leaves_errors_and_results(pair: Pair, tmp_path: Path) -> None:
    """-q / --quiet, before or after the command: no summary, note or progress;
    ls still lists, id still prints, --json still prints, errors still show."""
    ck = make_checkpoint(tmp_path / "ck", {"a.bin": 2000})
    loud = run(pair.a, "publish", str(ck), "--name", "m")
    assert loud.stdout.startswith("published m@1")
    quiet = run(pair.a, "publish", str(ck), "--name", "m2", "--quiet")
    assert (quiet.stdout, quiet.stderr) == ("", "")
    server = pair.serve_a()
    got = run(pair.b, "-q", "pull", "m", "--from", server.addr, "-o", str(tmp_path / "o"))
    assert (got.stdout, got.stderr) == ("", "")
    assert (tmp_path / "o" / "a.bin").stat().st_size == 2000
    listed = run(pair.b, "ls", "-q", "--peer", server.addr)
    assert "m@1" in listed.stdout and listed.stderr == ""
    assert run(pair.b, "id", "-q").stdout.strip() == pair.b_id
    doc = json_of(
        run(pair.b, "-q", "pull", "m", "--from", server.addr, "-o", str(tmp_path / "o"), "--json")
    )
    assert doc["version"] == 1
    failed = run(pair.b, "-q", "pull", "nope", "--from", server.addr, check=False)
    assert failed.returncode == 3 and "error:" in failed.stderr
