"""The daemon's web page in a real headless Chromium, against real daemons:
the page loads with the token from its URL, shows this node's ID and QR
code, a transfer's progress moving, versions with their metadata and how
many nodes hold them, peers and follows; from the page: pausing a transfer
stops its bytes and resuming it goes on from its verified chunks, a version
a peer offers is pulled into ``[web] pull_dir``, another node pairs with
the code the page shows, and pinning a version and unpublishing one do what
``p2pckpt current --pin`` and ``p2pckpt unpublish`` do; requests without
the token, or with a foreign Host, are refused.

Screenshots go to ``$P2PCKPT_SCREENSHOTS`` (default: the test's tmp dir)."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import browser
from tests.e2e.nodes import Server, run, start_daemon, wait_until


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """Never skipped: the README's test command installs Debian's Chromium."""
    assert browser.available(), "needs Debian's chromium and chromium-driver: see the README"


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(port: int, path: str, body: dict[str, object], token: str) -> tuple[int, Any]:
    """An action as the page sends it (token, JSON, our own Origin)."""
    host = f"127.0.0.1:{port}"
    headers = {"Host": host, "Origin": f"http://{host}", "X-P2pckpt-Token": token}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), headers | {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_web_page_in_a_browser(tmp_path: Path) -> None:
    shots = Path(os.environ.get("P2PCKPT_SCREENSHOTS", tmp_path))
    a, b = tmp_path / "A", tmp_path / "B"
    a_id = run(a, "init").stdout.strip()
    b_id = run(b, "init").stdout.strip()
    run(a, "trust", "add", b_id, "--name", "edge", "--role", "pull", "--role", "publish")
    run(b, "trust", "add", a_id, "--name", "nas", "--role", "publish", "--role", "pull")
    pulled = tmp_path / "pulled"
    watched, models = tmp_path / "ckpt", tmp_path / "models"
    watched.mkdir()
    a_cfg = tmp_path / "a.toml"
    a_cfg.write_text(
        '[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
        f'[[watch]]\npath = "{watched}"\nname = "llama-ft"\nstable_seconds = 0.3\n'
    )
    servers: list[Server] = []
    page: browser.Browser | None = None
    try:
        servers.append(seeder := start_daemon(a, tmp_path / "a.log", a_cfg))
        hook = tmp_path / "reload.sh"
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o755)
        b_cfg = tmp_path / "b.toml"
        b_cfg.write_text(
            '[serve]\nlisten = "127.0.0.1:0"\n[discovery]\nmdns = false\n'
            '[limits]\ndownload = "3MB"\n[web]\nlisten = "127.0.0.1:0"\n'
            f'pull_dir = "{pulled}"\n'
            f'[[peer]]\nid = "{a_id}"\naddr = "{seeder.addr}"\n'
            f'[[follow]]\nname = "llama-ft"\ndir = "{models}"\nkeep = 5\nhook = ["{hook}"]\n'
        )
        servers.append(follower := start_daemon(b, tmp_path / "b.log", b_cfg))
        found = re.search(r"web page url=(http://127\.0\.0\.1:(\d+)/)", follower.log.read_text())
        assert found, follower.log.read_text()
        url, port = found[1], int(found[2])
        token_file = b / "web-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in follower.log.read_text()  # never in a log
        host = {"Host": f"127.0.0.1:{port}"}

        # Refused: no token, a wrong one, a foreign Host (DNS rebinding).
        assert _get(port, "/api/status", host)[0] == 401
        assert _get(port, "/api/status", host | {"X-P2pckpt-Token": "x" * 43})[0] == 401
        evil = {"Host": f"evil.example:{port}", "X-P2pckpt-Token": token}
        assert _get(port, "/api/status", evil)[0] == 403
        assert _get(port, "/", evil)[0] == 403
        ok, doc = _get(port, "/api/status", host | {"X-P2pckpt-Token": token})
        assert ok == 200 and json.loads(doc)["peer_id"] == b_id
        status, html = _get(port, "/", host)
        assert status == 200
        print(f"web page: {len(html)} bytes ({len(html) / 1024:.1f} KiB)")
        assert len(html) < 16 * 1024

        def publish(version: int, size: int) -> None:
            ckpt = tmp_path / f"llama-ft-step{version}"
            ckpt.mkdir()
            (ckpt / "model.safetensors").write_bytes(os.urandom(size))
            ckpt.rename(watched / ckpt.name)  # whole at once: the watcher publishes it

        def current() -> str:
            link = models / "llama-ft" / "current"
            return os.readlink(link) if link.is_symlink() else ""

        for version in (1, 2):
            publish(version, 300_000)
            wait_until(lambda v=version: current() == str(v), 60, f"version {version} current")
        notes = tmp_path / "notes.safetensors"
        notes.write_bytes(os.urandom(50_000))
        meta = ("step=7000", "base_model=llama-3-8b", "license=apache-2.0", "format=safetensors")
        run(b, "publish", str(notes), "--name", "notes", "--version", "7",
            *(x for m in meta for x in ("--meta", m)))  # fmt: skip

        page = browser.Browser(tmp_path / "chromedriver.log")
        page.go(url + "#token=" + token)
        page.wait_text("#peer", b_id)
        assert page.js("return location.hash") == ""  # the token left the address bar
        assert page.js("return document.querySelector('#qr svg') !== null")
        page.wait_text("#follows", "llama-ft")
        page.wait_text("#versions", "llama-ft@2")
        page.wait_text("#peers", "nas")
        notes_row = page.wait_text("#versions", "notes@7")
        for shown in ("7000", "llama-3-8b", "apache-2.0", "safetensors"):
            assert shown in notes_row

        # Replicas: once A pulled notes@7 from us, 1 of the 1 node with the
        # pull role holds it verified.
        run(a, "pull", "notes", "--from", follower.addr, "-o", str(tmp_path / "a-notes"))
        page.wait_text("#versions", "1 of 1 nodes hold v7 verified")

        # A version A offers, pulled from the page into [web] pull_dir.
        evals = tmp_path / "evals.bin"
        evals.write_bytes(os.urandom(200_000))
        run(a, "publish", str(evals), "--name", "eval-set")
        page.wait_text("#offers", "eval-set@1")
        # Only what a trusted peer offers, and names the daemon knows.
        for peer, version in ((a_id, 9), (b_id, 1)):
            args = {"peer": peer, "name": "eval-set", "version": version}
            answer, reply = _post(port, "/api/pull", args, token)
            assert answer == 404 and reply["exit"] == 3, reply
        assert _post(port, "/api/pause", {"name": "nope", "action": "pause"}, token)[0] == 404
        page.click('#offers button[data-body*="eval-set"]')
        page.wait_text("#pulls", "done")
        assert (pulled / "eval-set" / "1" / "evals.bin").read_bytes() == evals.read_bytes()
        page.wait_text("#offers", "held here")

        # Pairing: the page shows a code; another node types it.
        page.click('#pair button[data-path="/api/pair"]')
        page.accept_alert()
        shown = page.wait_text("#pair", "--from")
        code = re.search(r"p2pckpt pair (\S+)", shown)
        where = re.search(r"--from (127\.0\.0\.1:\d+)", shown)
        assert code and where, shown
        page.screenshot(shots / "web-pairing.png")
        c = tmp_path / "C"
        c_id = run(c, "init").stdout.strip()
        run(c, "pair", code[1], "--from", where[1], "--no-mdns", "--yes", "--as", "gpu-box")
        page.wait_text("#pair", "paired with gpu-box")
        page.wait_text("#peers", "gpu-box")
        assert c_id in {p["id"] for p in json.loads(run(b, "trust", "ls", "--json").stdout)}

        # A 12 MB version at 3 MB/s: the page shows its progress moving.
        def done_bytes() -> list[int]:
            doc = json.loads(_get(port, "/api/status", host | {"X-P2pckpt-Token": token})[1])
            return [t["bytes_done"] for t in doc["transfers"] if t["version"] == 3]

        publish(3, 12_000_000)
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 2:
            found_pct = re.search(r"llama-ft@3\s+(\d+)%", page.text("#transfers"))
            if found_pct and (not seen or int(found_pct[1]) != seen[-1]):
                seen.append(int(found_pct[1]))
            time.sleep(0.2)
        assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] < 100, seen
        assert "MB/s" in page.text("#transfers")
        page.screenshot(shots / "web-transfer.png")

        # Pause it from the page: no byte moves until resumed, and the
        # resumed pull keeps what was verified.
        page.click('#transfers button[data-path="/api/pause"]')
        page.wait_text("#transfers", "paused")
        page.wait_text("#follows", "(paused)")
        held = done_bytes()
        assert held and 0 < held[0] < 12_000_000
        time.sleep(1.0)
        assert done_bytes() == held and current() == "2"
        page.screenshot(shots / "web-paused.png")
        page.click("#transfers button[data-body*='resume']")
        wait_until(lambda: current() == "3", 60, "version 3 current")
        got = re.findall(
            r"pulled name=llama-ft version=3 downloaded=(\d+)", follower.log.read_text()
        )
        assert got and int(got[-1]) <= 12_000_000 - held[0] + 1_000_000, (got, held)
        page.wait_text("#versions", "llama-ft@3")
        page.wait_text("#follows", "1, 2, 3")

        # Pin version 1 from the page: `current` moves and stays there.
        page.click('button[data-path="/api/current"][data-body*="\\"version\\":1"]')
        wait_until(lambda: current() == "1", 20, "current pinned at 1")
        assert (models / "llama-ft" / ".pinned").read_text().strip() == "1"
        page.wait_text("#follows", "1 (pinned)")
        page.wait_text("#follows", "v1: exit 0")  # the pin ran the hook
        page.screenshot(shots / "web-pinned.png")

        # Unpublish 2 from the page (after the confirmation).
        page.click('button[data-path="/api/unpublish"][data-body*="\\"version\\":2"]')
        page.accept_alert()
        wait_until(lambda: "llama-ft@2" not in page.text("#versions"), 20, "m@2 gone from the page")
        listed = json.loads(run(b, "ls", "--json").stdout)
        here = {v["version"] for v in listed if v["name"] == "llama-ft" and v["where"] == "local"}
        assert here == {1, 3}
        page.screenshot(shots / "web-after.png")
        refused = [m for m in page.console() if "Content Security Policy" in m or "Refused" in m]
        assert refused == []  # the page keeps to its own strict policy

        # A page opened without the token asks for it and shows nothing.
        page.js("sessionStorage.clear()")
        page.go(url)
        page.wait_text("#state", "no token")
        assert page.text("#peer") == ""
        page.screenshot(shots / "web-no-token.png")
    finally:
        if page is not None:
            page.close()
        for s in servers:
            s.stop()
