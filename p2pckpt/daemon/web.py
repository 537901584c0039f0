"""The daemon's optional web page (``[web] listen``): one HTML page and a JSON API.

Imported only when ``[web]`` is configured (h11 and segno are not loaded
otherwise, so the CLI starts as fast as before). HTTP/1.1 is parsed by h11
over trio sockets, inside the daemon's nursery.

Every request is untrusted input, even on loopback (any local user, and any
web page the owner visits, can reach a loopback port):

- ``Host`` must name the listen address, 127.0.0.1, localhost, [::1] or a
  ``[web] hosts`` name, with the port: a DNS-rebinding page is refused (403).
- ``/api/*`` needs ``X-P2pckpt-Token`` equal to ``HOME/web-token`` (0600,
  created on first use, like Syncthing's API key); without it: 401. The page
  itself (``/``) holds no data and is served without it: a browser cannot put
  a header on a navigation, and a token in the query string would end up in
  history and logs. The page takes the token from its URL's fragment
  (``/#token=...``, never sent over the wire), keeps it in sessionStorage and
  sends it as that header.
- Actions (``ACTIONS``) are POST only, with
  ``Content-Type: application/json`` and an ``Origin`` that is this page's
  own (CSRF: a cross-site form cannot set the header nor the type, and a
  cross-site fetch carries its own Origin). ``read_only``: 403 for them.
- Every response: a strict Content-Security-Policy (``default-src 'none'``,
  the page's one script and one style allowed by hash, ``connect-src
  'self'``), ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``,
  ``nosniff``, ``no-referrer``, ``no-store``.
- Limits (``Limits``): request head 8 KiB and 32 headers (431), body 16 KiB
  (413), 16 connections at once (more are closed at once), 10 s to send a
  whole request (slowloris), also the idle limit of a kept-alive connection.

API (JSON; errors are ``{"error": str, "exit": int}``)::

    GET  /api/node      {"peer_id", "qr_svg", "read_only", "release"}
    GET  /api/status    the daemon's status document (see ``control``), with
                        "meta" on each version and "kept" on each follow
    POST /api/current   {"name", "action": "pin"|"unpin"|"rollback", "version"}
                        -> as ``p2pckpt current --json``
    POST /api/unpublish {"name", "version"} -> as ``p2pckpt unpublish --json``
    POST /api/pause     {"name", "action": "pause"|"resume"} -> as ``p2pckpt pause --json``
    POST /api/pull      {"peer", "name", "version"} -> the pull started (``web_backend``)
    POST /api/pair      {"action": "start"|"cancel", "roles"} -> the invitation

Every argument is typed and bounded here before the backend sees it; the
status adds "offers", "pulls", "pairing" and each published version's
"replicas" (``web_backend``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import h11
import trio

from p2pckpt.errors import ConfigError, NotFound, P2pckptError

if TYPE_CHECKING:
    pass

log = logging.getLogger("p2pckpt.web")

TOKEN_FILE: Final = "web-token"  # noqa: S105 - a file name, not a secret
TOKEN_HEADER: Final = "x-p2pckpt-token"  # noqa: S105 - a header name
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")
ACTIONS: Final = ("/api/current", "/api/unpublish", "/api/pause", "/api/pull", "/api/pair")
CURRENT_ACTIONS: Final = ("pin", "unpin", "rollback")
PAUSE_ACTIONS: Final = ("pause", "resume")
PAIR_ACTIONS: Final = ("start", "cancel")
ROLES: Final = ("pull", "publish", "push")
MAX_VERSION: Final = 2**63 - 1  # versions are signed 64-bit on the wire
_PEER_RE: Final = re.compile(r"[A-Z2-7-]{16,128}")


@dataclass(frozen=True)
class Limits:
    head: int = 8 * 1024  # request line + headers, bytes
    headers: int = 32
    body: int = 16 * 1024
    connections: int = 16
    request_timeout: float = 10.0  # to receive a whole request (and to wait for the next one)
    send_timeout: float = 10.0


def load_token(home: Path) -> str:
    """``HOME/web-token``: created (0600, 256 random bits) on first use; an
    existing one must be ours and not readable by others (R-54)."""
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the web token {path}: {exc.strerror}") from None
    with os.fdopen(fd) as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ConfigError(f"{path} must be a file of ours with mode 0600 (chmod 600 {path})")
        token = src.read(256).strip()
    if not _TOKEN_RE.fullmatch(token):
        raise ConfigError(f"{path} does not hold a token (delete it to make a new one)")
    return token


class Backend(Protocol):
    """What the page shows and does (the daemon's state; a fake in tests)."""

    def node(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    async def current(self, request: dict[str, Any]) -> Any: ...

    def unpublish(self, name: str, version: int) -> dict[str, Any]: ...

    async def pause(self, name: str, action: str) -> dict[str, Any]: ...

    async def pull(self, peer: str, name: str, version: int) -> dict[str, Any]: ...

    async def pair(self, action: str, roles: list[str]) -> dict[str, Any]: ...


def qr_svg(text: str) -> str:
    """A QR code of ``text`` as a standalone SVG (segno: pure Python, no deps)."""
    import segno

    out = io.BytesIO()
    segno.make(text, error="m").save(
        out, kind="svg", xmldecl=False, svgns=True, scale=4, border=4, light="#fff", nl=False
    )
    return out.getvalue().decode()


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (its inline script and style by hash)."""
    html = resources.files("p2pckpt.daemon").joinpath("web_page.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    csp = (
        "default-src 'none'; "
        f"script-src {' '.join(map(_sha256, scripts))}; "
        f"style-src {' '.join(map(_sha256, styles))}; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html.encode(), csp


class _Refused(Exception):
    """Answer with ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    411: b"Length Required",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}


class WebServer:
    """The HTTP side: checks every request (see the module docstring), then
    hands it to the backend."""

    def __init__(
        self,
        backend: Backend,
        token: str,
        *,
        read_only: bool = False,
        hosts: Iterable[str] = (),
        limits: Limits | None = None,
    ) -> None:
        self.backend = backend
        self._token = token.encode()
        self.read_only = read_only
        self._names = {"127.0.0.1", "localhost", "[::1]", *(h.lower() for h in hosts)}
        self.limits = limits or Limits()
        self._page, self.csp = _page()
        self._open = 0
        self._allowed: set[str] = set()

    def _headers(self, content_type: str, length: int) -> list[tuple[str, str]]:
        return [
            ("Content-Type", content_type),
            ("Content-Length", str(length)),
            ("Content-Security-Policy", self.csp),
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-store"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ]

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; reports the page's URL
        (without its token)."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            where = f"{host}:{port}"
            raise ConfigError(f"cannot serve the web page on {where}: {exc.strerror}") from None
        bound = listeners[0].socket.getsockname()[1]
        names = set(self._names)
        if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard is no Host name
            names.add(f"[{host}]" if ":" in host else host.lower())
        self._allowed = {f"{n}:{bound}" for n in names}
        url = "http://{}:{}/".format(f"[{host}]" if ":" in host else host, bound)
        log.info("web page url=%s read_only=%s", url, self.read_only)
        task_status.started(url)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._open >= self.limits.connections:
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception:  # one connection, never the daemon
            log.exception("web connection failed")
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.head)
        while True:
            try:
                with trio.move_on_after(self.limits.request_timeout) as scope:
                    request, body = await self._receive(conn, stream)
                if scope.cancelled_caught:
                    return  # too slow, or idle: drop it (slowloris)
                if request is None:
                    return  # the client closed
                try:
                    status, ctype, payload = await self._answer(request, body)
                except _Refused:
                    raise
                except Exception:  # the backend failed: one answer, never the daemon
                    log.exception("web request failed target=%r", request.target[:200])
                    raise _Refused(500, "internal error (see the daemon's log)") from None
            except _Refused as refused:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, stream, *_error(refused.status, str(refused)), True)
                    await _linger(stream)
                return
            await self._send(conn, stream, status, ctype, payload, False)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _receive(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        head = len(conn.trailing_data[0])  # pipelined bytes already received
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Refused(exc.error_status_hint, f"bad request: {exc}") from None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                if request is None:  # h11 bounds only an incomplete head: the whole one too
                    head += len(data)
                    if head > self.limits.head:
                        raise _Refused(431, "request head too large")
                conn.receive_data(data)
                if not data and request is None and conn.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
                self._check_head(event)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.body:
                    raise _Refused(413, "request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    def _check_head(self, request: h11.Request) -> None:
        """Limits and the Host check, before any body is read."""
        if len(request.headers) > self.limits.headers:
            raise _Refused(431, "too many headers")
        headers = _headers(request)
        if headers.get("host", "").lower() not in self._allowed:
            raise _Refused(403, "Host not allowed (use the address the daemon printed)")
        if "transfer-encoding" in headers:
            raise _Refused(411, "send a Content-Length")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.limits.body:
            raise _Refused(413, "request body too large")

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, str, bytes]:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers = _headers(request)
        if path == "/":
            if method != "GET":
                raise _Refused(405, "GET only")
            return 200, "text/html; charset=utf-8", self._page
        if not path.startswith("/api/"):
            raise _Refused(404, "no such page")
        given = headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, self._token):
            raise _Refused(401, f"a valid {TOKEN_HEADER} header is required")
        if path in ("/api/node", "/api/status"):
            if method != "GET":
                raise _Refused(405, "GET only")
            doc = self.backend.node() if path == "/api/node" else self.backend.status()
            return 200, "application/json", _json(doc)
        if path not in ACTIONS:
            raise _Refused(404, "no such call")
        if self.read_only:
            raise _Refused(403, "this page is read-only ([web] read_only = true)")
        if method != "POST":
            raise _Refused(405, "POST only")
        host = headers.get("host", "")
        if headers.get("origin", "") != f"http://{host}":
            raise _Refused(403, "cross-origin request refused (Origin)")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Refused(415, "send application/json")
        try:
            args = json.loads(body)
        except ValueError:
            raise _Refused(400, "the body is not JSON") from None
        if not isinstance(args, dict):
            raise _Refused(400, "the body must be a JSON object")
        try:
            result = await self._act(path, args)
        except P2pckptError as exc:
            status = 404 if isinstance(exc, NotFound) else 409
            if isinstance(exc, ConfigError):
                status = 400
            return status, "application/json", _json({"error": str(exc), "exit": exc.exit_code})
        return 200, "application/json", _json(result)

    async def _act(self, path: str, args: dict[str, Any]) -> Any:
        """Check an action's arguments (types, sizes, choices) and run it."""
        if path == "/api/pair":
            action, roles = args.get("action"), args.get("roles", ["pull"])
            if action not in PAIR_ACTIONS:
                raise ConfigError(f'"action" must be one of {", ".join(PAIR_ACTIONS)}')
            if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
                raise ConfigError(f'"roles" must be a list of some of {", ".join(ROLES)}')
            log.info("pair action=%s (web page)", action)
            return await self.backend.pair(action, sorted(set(roles)))
        name, version = args.get("name"), args.get("version")
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ConfigError('"name" must be a string (at most 128 characters)')
        if version is not None and (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not 0 <= version <= MAX_VERSION
        ):
            raise ConfigError('"version" must be an integer')
        if path == "/api/current":
            action = args.get("action")
            if action not in CURRENT_ACTIONS:
                raise ConfigError(f'"action" must be one of {", ".join(CURRENT_ACTIONS)}')
            log.info("current name=%s action=%s version=%s (web page)", name, action, version)
            return await self.backend.current({"name": name, "action": action, "version": version})
        if path == "/api/pause":
            action = args.get("action")
            if action not in PAUSE_ACTIONS:
                raise ConfigError(f'"action" must be one of {", ".join(PAUSE_ACTIONS)}')
            return await self.backend.pause(name, action)
        if version is None:
            raise ConfigError(f"{path.rsplit('/', 1)[1]} needs a version")
        if path == "/api/pull":
            peer = args.get("peer")
            if not isinstance(peer, str) or not _PEER_RE.fullmatch(peer):
                raise ConfigError('"peer" must be a peer ID')
            log.info("pull name=%s version=%d peer=%s (web page)", name, version, peer[:8])
            return await self.backend.pull(peer, name, version)
        return self.backend.unpublish(name, version)

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        ctype: str,
        payload: bytes,
        close: bool,
    ) -> None:
        headers = self._headers(ctype, len(payload))
        if close:
            headers.append(("Connection", "close"))
        reason = _REASONS.get(status, b"")
        with trio.fail_after(self.limits.send_timeout):
            head = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
            data = conn.send(h11.Data(data=payload))
            end = conn.send(h11.EndOfMessage())
            assert head is not None and data is not None and end is not None
            await stream.send_all(head + data + end)


async def _linger(stream: trio.SocketStream) -> None:
    """Close our side, then read (and drop) a little of what the client still
    sends, so that closing with unread bytes does not reset the connection
    before it has read our answer; bounded in bytes and time."""
    with trio.move_on_after(1.0):
        await stream.send_eof()
        left = 64 * 1024
        while left > 0 and (data := await stream.receive_some(16 * 1024)):
            left -= len(data)


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION


def _headers(request: h11.Request) -> dict[str, str]:
    """Header names lowered (h11 does) to their last value, as text."""
    return {k.decode("ascii"): v.decode("latin-1") for k, v in request.headers}


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", _json({"error": message})
