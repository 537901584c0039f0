"""A real headless Chromium for end-to-end tests, driven through chromedriver's
W3C WebDriver HTTP API with the standard library (no selenium).

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when
missing). The browser talks to loopback only: background networking, sync,
component updates and QUIC are off, and its profile is a fresh directory.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1400,1000",
)


def available() -> bool:
    return shutil.which("chromedriver") is not None and os.path.exists(CHROMIUM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """One chromedriver process and one browser session."""

    def __init__(self, log: Path) -> None:
        self._profile = tempfile.mkdtemp(prefix="p2pckpt-chromium-")
        self._port = _free_port()
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self._driver = subprocess.Popen(
            ["chromedriver", f"--port={self._port}", "--allowed-ips=127.0.0.1"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._session = ""
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if self._call("GET", "/status")["ready"]:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("chromedriver did not start")
                time.sleep(0.1)
            options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={self._profile}"]}
            caps = {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL"},
            }
            created = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self._session = created["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # loopback chromedriver only
            f"http://127.0.0.1:{self._port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self._session}{path}", body)

    def go(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self, css: str) -> str:
        found = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
        return str(self.js(found, css))

    def click(self, css: str) -> None:
        found = self._s("POST", "/element", {"using": "css selector", "value": css})
        element = next(iter(found.values()))
        self._s("POST", f"/element/{element}/click", {})

    def console(self) -> list[str]:
        """The page's console messages since the last call (CSP violations land here)."""
        return [str(e.get("message", "")) for e in self._s("POST", "/se/log", {"type": "browser"})]

    def accept_alert(self) -> None:
        self._s("POST", "/alert/accept", {})

    def screenshot(self, path: Path) -> None:
        """The whole page (the window grows to its height first)."""
        height = int(self.js("return document.documentElement.scrollHeight"))
        self._s("POST", "/window/rect", {"width": 1400, "height": max(1000, height + 140)})
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))

    def wait_text(self, css: str, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text(css)
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared in {css}: {text!r}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            if self._session:
                self._s("DELETE", "")
        finally:
            self._driver.terminate()
            try:
                self._driver.wait(10)
            except subprocess.TimeoutExpired:
                self._driver.kill()
                self._driver.wait(10)
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)
