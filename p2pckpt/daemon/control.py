"""The daemon's local control channel: a Unix socket only this user can reach (R-56).

Not loopback TCP: every local user can connect to a loopback port, so it
would need a token. A Unix socket in a 0700 directory is unreachable for
other users, and ``SO_PEERCRED`` checks the caller's uid again in case the
directory is ever opened up. ``HOME/run/`` (0700, ours, created by the
server) holds ``control.sock`` (0600) and ``daemon.lock``, flock-ed while a
daemon serves so two daemons starting at once never steal each other's socket.

Protocol, one request per connection::

    -> {"cmd": "status", ...args}\\n
    <- {"ok": true, "result": ...}\\n   or   {"ok": false, "error": "...", "exit": N}\\n

(``exit``: the exit code of a refusal p2pckpt raised.) Commands: ``status``,
``current`` {"name", "action": "show" | "pin" | "unpin" | "rollback",
"version"} (see ``follow.switch``), and ``pause`` {"name", "action":
"pause" | "resume"} (see ``daemon.pauses``).

Limits: request line <= 64 KiB, 16 clients at once, 10 s per request.

The ``status`` result, filled by the daemon (the printer copes with any
field or list missing)::

    {"peer_id": str,                    this node's peer ID
     "started": float,                  unix time the daemon started
     "versions": [{"name": str, "version": int, "bytes": int,
                   "origin": "published" | "pulled", "location": str}],
     "transfers": [{"name": str, "version": int, "direction": "pull" | "serve",
                    "bytes_done": int, "bytes_total": int,
                    "rate": float,      bytes/s, recent (0 while paused)
                    "paused": bool,
                    "peers": [{"id": str, "route": "direct" | "relay",
                               "via": str}]}],   HOST:PORT dialled, or the relay
     "peers": [{"id": str, "name": str, "route": "direct" | "relay",
                "addr": str, "seen": float}],   unix time last heard from
     "follows": [{"name": str, "dir": str, "current": int | null,
                  "pinned": int | null, "last_version": int | null,
                  "last_check": float | null, "last_error": str,
                  "last_error_at": float | null,
                  "hook": {"version": int, "code": int | null, "at": float,
                           "error": str} | null,
                  "paused": bool}],
     "watches": [{"name": str, "path": str, "last_version": int | null,
                  "last_published": float | null, "last_error": str,
                  "last_error_at": float | null}]}
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import trio

from p2pckpt.errors import ConfigError, DaemonNotRunning, P2pckptError, RemoteProtocolError
from p2pckpt.manifest.paths import safe_display

log = logging.getLogger("p2pckpt.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

RUN_DIR: Final = "run"
SOCKET_NAME: Final = "control.sock"
LOCK_NAME: Final = "daemon.lock"
MAX_LINE: Final = 64 * 1024
MAX_REPLY: Final = 16 * 1024 * 1024
MAX_CLIENTS: Final = 16
REQUEST_TIMEOUT: Final = 10.0
SEND_TIMEOUT: Final = 2.0
PROBE_TIMEOUT: Final = 2.0
_SUN_PATH_MAX: Final = 107  # sockaddr_un.sun_path is 108 bytes with the NUL
_RECV: Final = 64 * 1024
_UCRED: Final = "3i"  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def socket_path(home: Path) -> Path:
    """``HOME/run/control.sock``, the one place daemon and clients meet."""
    return home.expanduser().absolute() / RUN_DIR / SOCKET_NAME


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_UCRED))
    _pid, uid, _gid = struct.unpack(_UCRED, raw)
    return int(uid)


def uid_allowed(uid: int, own_uid: int | None = None) -> bool:
    """Only our own user (and root, who could read our key anyway) may drive us."""
    own = os.geteuid() if own_uid is None else own_uid
    return uid in (own, 0)


def _prepare_run_dir(run: Path) -> None:
    """Create ``run`` 0700, or accept it only if it already is ours and 0700 (R-54)."""
    try:
        run.mkdir(mode=0o700)
        os.chmod(run, 0o700)  # mkdir's mode went through the umask
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise ConfigError(f"no node home at {safe_display(str(run.parent))}") from None
    st = run.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{safe_display(str(run))} is not a directory: remove it")
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise ConfigError(
            f"{safe_display(str(run))} must be a 0700 directory owned by uid {os.geteuid()}"
            f" (it is {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}): fix or remove it"
        )


def _already_running(home: Path) -> ConfigError:
    return ConfigError(f"a daemon is already running for {safe_display(str(home))}")


def _lock(run: Path, home: Path) -> int:
    """Hold ``run/daemon.lock`` for the daemon's lifetime; the kernel drops it on exit."""
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _already_running(home) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _answers(path: Path) -> bool:
    """Whether something listens on the socket file at ``path`` (a live daemon)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await sock.connect(os.fspath(path))
            except ConnectionRefusedError:
                return False
            return True
        return True  # a full backlog: someone is there


def _socket_exists(path: Path) -> bool:
    """Whether a socket file is at ``path``; anything else there is refused."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{safe_display(str(path))} is not a socket: remove it")
    return True


def _unlink(path: Path, inode: tuple[int, int] | None = None) -> None:
    """Remove the socket file, if it is still the one we bound (``inode``)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if inode is None or (st.st_dev, st.st_ino) == inode:
            path.unlink()


def _resolve(home_path: Path) -> tuple[Path, Path]:
    """(home, socket path), absolute; the socket path must fit in sun_path."""
    home = home_path.expanduser().absolute()
    path = socket_path(home)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigError(
            f"control socket path {safe_display(str(path))} is longer than {_SUN_PATH_MAX}"
            " bytes, the Unix socket limit: use a shorter --home"
        )
    return home, path


async def _bind(path: Path, home: Path) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    """Bind the control socket, replacing a stale file left by a crash.

    Returns the listening socket and the (dev, inode) of its file."""
    if _socket_exists(path):
        if await _answers(path):
            raise _already_running(home)
        log.info('removing stale control socket path="%s"', safe_display(str(path)))
        _unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):  # Linux: the file gets this mode at bind
            os.fchmod(sock.fileno(), 0o600)
        await sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
        st = os.stat(path)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def _reply(ok: bool, value: Any) -> bytes:
    doc = {"ok": True, "result": value} if ok else {"ok": False, "error": str(value)}
    if not ok and isinstance(value, P2pckptError):
        doc["exit"] = value.exit_code  # so the client exits as if it ran the command itself
    return json.dumps(doc).encode() + b"\n"


async def _read_line(stream: trio.abc.ReceiveStream, limit: int) -> bytes | None:
    """One line without its newline; None if it exceeds ``limit`` bytes. EOF ends a line."""
    buf = bytearray()
    while True:
        data = await stream.receive_some(min(_RECV, limit + 1 - len(buf)))
        if not data:
            return bytes(buf)
        start = len(buf)
        buf += data
        end = buf.find(b"\n", start)
        if end >= 0:
            return bytes(buf[:end]) if end <= limit else None
        if len(buf) > limit:
            return None


async def _answer(stream: trio.SocketStream, handlers: Mapping[str, Handler]) -> bytes:
    """Read one request and compute the reply line."""
    line = await _read_line(stream, MAX_LINE)
    if line is None:
        return _reply(False, f"request longer than {MAX_LINE} bytes")
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return _reply(False, "request is not JSON")
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return _reply(False, 'request must be an object with a string "cmd"')
    cmd: str = req["cmd"]
    handler = handlers.get(cmd)
    if handler is None:
        return _reply(False, f"unknown command {cmd!r}")
    try:
        return _reply(True, await handler(req))
    except P2pckptError as exc:
        return _reply(False, exc)
    except Exception:
        log.exception("control command failed command=%s", cmd)
        return _reply(False, f"internal error in {cmd!r} (see the daemon log)")


async def _client(
    stream: trio.SocketStream, handlers: Mapping[str, Handler], slots: trio.Semaphore
) -> None:
    """Check who is calling, then answer one request within the limits."""
    uid = peer_uid(stream.socket)
    if not uid_allowed(uid):
        log.warning("refused control connection uid=%d", uid)
        return
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        reply = _reply(False, f"busy: {MAX_CLIENTS} control clients connected")
    else:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                reply = await _answer(stream, handlers)
            if scope.cancelled_caught:
                reply = _reply(False, f"timed out after {REQUEST_TIMEOUT:.0f} s")
        finally:
            slots.release()
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(reply)


async def serve_control(
    home_path: Path,
    handlers: Mapping[str, Handler],
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests on ``HOME/run/control.sock`` until cancelled.

    Refuses to start (ConfigError) if another daemon serves this home or the
    run directory is not ours and 0700. ``task_status.started(path)`` once
    clients can connect; the socket file is removed on the way out.
    """
    home, path = _resolve(home_path)
    _prepare_run_dir(path.parent)
    lock_fd = _lock(path.parent, home)
    try:
        sock, inode = await _bind(path, home)
        slots = trio.Semaphore(MAX_CLIENTS)

        async def handle(stream: trio.SocketStream) -> None:
            """One client; nothing it does (or fails to do) ends the server."""
            async with stream:
                try:
                    await _client(stream, handlers, slots)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug('control client went away error="%s"', exc)
                except Exception:
                    log.exception("control client failed")

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
                log.info('control socket listening path="%s"', safe_display(str(path)))
                task_status.started(path)
        finally:
            sock.close()
            _unlink(path, inode)
    finally:
        os.close(lock_fd)


async def request(home_path: Path, cmd: str, **args: Any) -> Any:
    """Send one command to this home's daemon and return its result.

    Raises DaemonNotRunning if nothing listens, and P2pckptError with the
    daemon's (escaped) message if it refused the command.
    """
    home, path = _resolve(home_path)
    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(
            f"no daemon running for {safe_display(str(home))} (start it with 'p2pckpt daemon')"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"cannot reach the daemon at {safe_display(str(path))}: permission denied"
                " (is this home another user's?)"
            ) from None
        raise
    async with stream:
        try:
            with trio.fail_after(REQUEST_TIMEOUT + SEND_TIMEOUT):
                await stream.send_all(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                line = await _read_line(stream, MAX_REPLY)
        except trio.TooSlowError:
            raise P2pckptError(f"the daemon did not answer {cmd!r} in time") from None
        except trio.BrokenResourceError:
            line = b""
    if line is None:
        raise RemoteProtocolError(f"the daemon's reply to {cmd!r} is over {MAX_REPLY} bytes")
    if not line:
        raise RemoteProtocolError(f"the daemon closed the connection without answering {cmd!r}")
    try:
        reply = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise RemoteProtocolError(f"the daemon sent a malformed reply to {cmd!r}")
    if not reply["ok"]:
        error = P2pckptError(f"daemon: {safe_display(str(reply.get('error', 'failed')))}")
        code = reply.get("exit")
        if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 126:
            error.exit_code = code
        raise error
    return reply.get("result")
