"""The web page's HTTP layer over a real loopback socket: the token, the Host
check, CSRF (POST only, Origin, JSON), the security headers, read-only mode,
and the limits on request size, header count, connections and time."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pckpt.daemon.web import Limits, WebServer, load_token, qr_svg
from p2pckpt.errors import ConfigError, NotFound

TOKEN = "t" * 43
PEER = "ABCDEFG-HIJKLMN-OPQRSTU-VWXYZ23-4567ABC-DEFGHIJ-KLMNOPQ-RSTUVWX"


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.broken = False

    def node(self) -> dict[str, Any]:
        return {"peer_id": "ABC", "qr_svg": "<svg/>", "read_only": False, "release": "x"}

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("database is locked")
        return {"peer_id": "ABC", "versions": [], "transfers": []}

    async def current(self, request: dict[str, Any]) -> Any:
        self.calls.append(("current", request))
        if request["version"] == 99:
            raise NotFound("m@99 is not kept")
        return {"name": request["name"], "current": request["version"]}

    def unpublish(self, name: str, version: int) -> dict[str, Any]:
        self.calls.append(("unpublish", (name, version)))
        return {"name": name, "version": version, "unpublished": []}

    async def pause(self, name: str, action: str) -> dict[str, Any]:
        self.calls.append(("pause", (name, action)))
        return {"name": name, "paused": action == "pause", "changed": True}

    async def pull(self, peer: str, name: str, version: int) -> dict[str, Any]:
        self.calls.append(("pull", (peer, name, version)))
        return {"name": name, "version": version, "dest": "/srv/pulled/" + name}

    async def pair(self, action: str, roles: list[str]) -> dict[str, Any]:
        self.calls.append(("pair", (action, roles)))
        return {"state": "waiting", "code": "7-a-b"}


async def _start(nursery: trio.Nursery, server: WebServer) -> int:
    url: str = await nursery.start(server.serve, "127.0.0.1", 0)
    return int(url.rstrip("/").rsplit(":", 1)[1])


@pytest.fixture
async def web() -> AsyncIterator[tuple[WebServer, FakeBackend, int]]:
    backend = FakeBackend()
    server = WebServer(
        backend, TOKEN, limits=Limits(request_timeout=0.5, connections=4), hosts=["nas.lan"]
    )
    async with trio.open_nursery() as nursery:
        port = await _start(nursery, server)
        yield server, backend, port
        nursery.cancel_scope.cancel()


async def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read until the server closes; parse one response."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _req(
    method: str,
    path: str,
    port: int,
    *,
    host: str | None = None,
    token: str | None = TOKEN,
    origin: str | None = "same",
    body: bytes = b"",
    ctype: str = "application/json",
    extra: str = "",
) -> bytes:
    host = f"127.0.0.1:{port}" if host is None else host
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if token is not None:
        lines.append(f"X-P2pckpt-Token: {token}")
    if method == "POST":
        if origin is not None:
            lines.append(f"Origin: {'http://' + host if origin == 'same' else origin}")
        lines += [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + body


async def test_page_and_api_with_the_token(web: tuple[WebServer, FakeBackend, int]) -> None:
    server, _, port = web
    status, headers, body = await _exchange(port, _req("GET", "/", port, token=None))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<script>" in body and b"http" not in body.split(b"<body>")[1].replace(b"https", b"")
    csp = headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; script-src 'sha256-") and server.csp == csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    status, headers, body = await _exchange(port, _req("GET", "/api/status", port))
    assert status == 200 and json.loads(body)["peer_id"] == "ABC"
    assert "content-security-policy" in headers
    # Every name the page may be reached by; the port must match.
    for host in (f"localhost:{port}", f"[::1]:{port}", f"NAS.lan:{port}"):
        assert (await _exchange(port, _req("GET", "/api/node", port, host=host)))[0] == 200


async def test_no_token_or_a_wrong_one_is_refused(web: tuple[WebServer, FakeBackend, int]) -> None:
    _, backend, port = web
    for token in (None, "", TOKEN[:-1], TOKEN + "x", "u" * 43):
        for method, path in (("GET", "/api/status"), ("POST", "/api/current")):
            body = json.dumps({"name": "m", "action": "unpin"}).encode()
            status, _, reply = await _exchange(
                port, _req(method, path, port, token=token, body=body)
            )
            assert status == 401, (token, path)
            assert b"ABC" not in reply
    assert backend.calls == []


async def test_a_foreign_host_is_refused(web: tuple[WebServer, FakeBackend, int]) -> None:
    _, _, port = web
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", ""):
        for path in ("/", "/api/status"):
            status, _, body = await _exchange(port, _req("GET", path, port, host=host))
            assert status in (400, 403), (host, path, status)
            assert b"<script>" not in body and b"ABC" not in body


async def test_actions_need_post_json_and_our_origin(
    web: tuple[WebServer, FakeBackend, int],
) -> None:
    _, backend, port = web
    pin = json.dumps({"name": "m", "action": "pin", "version": 2}).encode()
    # GET never acts.
    assert (await _exchange(port, _req("GET", "/api/current?name=m", port)))[0] == 405
    # A cross-site page: a foreign Origin, none, or a form's content type.
    for origin in ("http://evil.example", "null", f"http://localhost:{port}", None):
        status, _, _ = await _exchange(
            port, _req("POST", "/api/current", port, origin=origin, body=pin)
        )
        assert status == 403, origin
    form = _req(
        "POST", "/api/current", port, body=b"name=m", ctype="application/x-www-form-urlencoded"
    )
    assert (await _exchange(port, form))[0] == 415
    assert (await _exchange(port, _req("POST", "/api/current", port, body=b"{")))[0] == 400
    assert (await _exchange(port, _req("POST", "/api/current", port, body=b"[]")))[0] == 400
    bad = json.dumps({"name": "m", "action": "delete-everything"}).encode()
    assert (await _exchange(port, _req("POST", "/api/current", port, body=bad)))[0] == 400
    assert (await _exchange(port, _req("POST", "/api/status", port, body=b"{}")))[0] == 405
    assert backend.calls == []
    status, _, body = await _exchange(port, _req("POST", "/api/current", port, body=pin))
    assert status == 200 and json.loads(body) == {"name": "m", "current": 2}
    missing = json.dumps({"name": "m", "action": "pin", "version": 99}).encode()
    status, _, body = await _exchange(port, _req("POST", "/api/current", port, body=missing))
    assert status == 404 and json.loads(body) == {"error": "m@99 is not kept", "exit": 3}
    gone = json.dumps({"name": "m", "version": 1}).encode()
    assert (await _exchange(port, _req("POST", "/api/unpublish", port, body=gone)))[0] == 200
    assert backend.calls == [
        ("current", {"name": "m", "action": "pin", "version": 2}),
        ("current", {"name": "m", "action": "pin", "version": 99}),
        ("unpublish", ("m", 1)),
    ]


async def test_read_only_has_no_actions() -> None:
    backend = FakeBackend()
    server = WebServer(backend, TOKEN, read_only=True)
    async with trio.open_nursery() as nursery:
        port = await _start(nursery, server)
        for path, args in (
            ("/api/current", {"name": "m", "action": "unpin"}),
            ("/api/unpublish", {"name": "m", "version": 1}),
            ("/api/pause", {"name": "m", "action": "pause"}),
            ("/api/pull", {"name": "m", "version": 1, "peer": PEER}),
            ("/api/pair", {"action": "start"}),
        ):
            body = json.dumps(args).encode()
            status, _, reply = await _exchange(port, _req("POST", path, port, body=body))
            assert status == 403 and b"read-only" in reply
        assert (await _exchange(port, _req("GET", "/api/status", port)))[0] == 200
        nursery.cancel_scope.cancel()
    assert backend.calls == []


async def test_oversized_requests_are_refused(web: tuple[WebServer, FakeBackend, int]) -> None:
    _, backend, port = web
    big_header = f"X-Pad: {'a' * 9000}\r\n"
    assert (await _exchange(port, _req("GET", "/", port, extra=big_header)))[0] == 431
    many = "".join(f"X-H{i}: 1\r\n" for i in range(40))
    assert (await _exchange(port, _req("GET", "/", port, extra=many)))[0] == 431
    body = json.dumps({"name": "m" * 20_000, "version": 1}).encode()
    assert (await _exchange(port, _req("POST", "/api/unpublish", port, body=body)))[0] == 413
    chunked = _req("POST", "/api/unpublish", port, extra="Transfer-Encoding: chunked\r\n")
    assert (await _exchange(port, chunked))[0] in (400, 411)
    assert (await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
    assert (await _exchange(port, _req("GET", "/nope", port)))[0] == 404
    assert backend.calls == []


async def test_slow_and_too_many_connections_are_dropped(
    web: tuple[WebServer, FakeBackend, int],
) -> None:
    server, _, port = web
    # Slowloris: half a request head, then nothing: closed after request_timeout.
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    await slow.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")
    with trio.fail_after(3):
        assert await slow.receive_some(100) == b""
    await slow.aclose()
    # More connections than the limit: the extra ones are closed at once.
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(server.limits.connections)]
    await trio.sleep(0.1)
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(0.4):  # before request_timeout: refused, not timed out
        assert await extra.receive_some(100) == b""
    for s in [*held, extra]:
        await s.aclose()
    await trio.sleep(0.1)
    assert (await _exchange(port, _req("GET", "/api/node", port)))[0] == 200


async def test_keep_alive_serves_several_requests(web: tuple[WebServer, FakeBackend, int]) -> None:
    _, _, port = web
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        one = _req("GET", "/api/status", port).replace(b"Connection: close\r\n", b"")
        for _ in range(3):
            await stream.send_all(one)
            data = b""
            with trio.fail_after(2):
                while not data.endswith(b"}"):
                    data += await stream.receive_some(65536)
            assert data.startswith(b"HTTP/1.1 200")


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    token = load_token(tmp_path)
    path = tmp_path / "web-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 43
    assert load_token(tmp_path) == token
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        load_token(tmp_path)
    path.unlink()
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(ConfigError):
        load_token(tmp_path)


def test_qr_is_standalone_svg() -> None:
    svg = qr_svg("ABCDE-FGHIJ")
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "style" not in svg
    assert "<script" not in svg


async def test_a_failing_backend_is_one_500(web: tuple[WebServer, FakeBackend, int]) -> None:
    _, backend, port = web
    backend.broken = True
    status, _, body = await _exchange(port, _req("GET", "/api/status", port))
    assert status == 500 and b"locked" not in body  # details go to the log only
    backend.broken = False
    assert (await _exchange(port, _req("GET", "/api/status", port)))[0] == 200


async def test_new_actions_check_their_arguments(web: tuple[WebServer, FakeBackend, int]) -> None:
    """Pause, pull and pair: token, Origin and JSON as the others; every
    argument typed, bounded and one of its choices, or 400 before the backend."""
    _, backend, port = web
    bad: list[tuple[str, dict[str, Any]]] = [
        ("/api/pause", {"name": "m", "action": "stop"}),
        ("/api/pause", {"name": "m" * 200, "action": "pause"}),
        ("/api/pause", {"action": "pause"}),
        ("/api/pull", {"name": "m", "peer": PEER}),  # no version
        ("/api/pull", {"name": "m", "version": -1, "peer": PEER}),
        ("/api/pull", {"name": "m", "version": True, "peer": PEER}),
        ("/api/pull", {"name": "m", "version": 1, "peer": "../../etc"}),
        ("/api/pull", {"name": "m", "version": 1, "peer": PEER, "dest": "/etc"}),  # ignored
        ("/api/pair", {"action": "start", "roles": ["root"]}),
        ("/api/pair", {"action": "start", "roles": "pull"}),
        ("/api/pair", {"action": "join"}),
    ]
    for path, args in bad:
        status, _, body = await _exchange(
            port, _req("POST", path, port, body=json.dumps(args).encode())
        )
        if "dest" in args:
            assert status == 200  # the folder is never the browser's: "dest" is not read
            continue
        assert status == 400, (path, args, status)
        assert "error" in json.loads(body)
    assert backend.calls == [("pull", (PEER, "m", 1))]
    backend.calls.clear()
    for path, args in (
        ("/api/pause", {"name": "m", "action": "pause"}),
        ("/api/pair", {"action": "start"}),
    ):
        body = json.dumps(args).encode()
        assert (await _exchange(port, _req("POST", path, port, body=body, token=None)))[0] == 401
        foreign = _req("POST", path, port, body=body, origin="http://evil.example")
        assert (await _exchange(port, foreign))[0] == 403
        assert (await _exchange(port, _req("GET", path, port)))[0] == 405
        assert (await _exchange(port, _req("POST", path, port, body=body)))[0] == 200
    assert backend.calls == [("pause", ("m", "pause")), ("pair", ("start", ["pull"]))]
