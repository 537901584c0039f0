"""The daemon's control socket over real Unix sockets: protocol, limits and who
may connect (R-56), plus the ``status`` printer.

Every async test is bounded by ``trio.fail_after``. The other-uid tests need
root (to become ``nobody``) and a Python interpreter ``nobody`` may run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from p2pckpt.cli.main import cli
from p2pckpt.cli.status_cmd import format_status
from p2pckpt.daemon import control
from p2pckpt.daemon.control import (
    MAX_CLIENTS,
    MAX_LINE,
    peer_uid,
    request,
    serve_control,
    socket_path,
    uid_allowed,
)
from p2pckpt.errors import ConfigError, DaemonNotRunning, P2pckptError, RemoteProtocolError

NOBODY = 65534
NOW = 1_700_000_000.0
PEER = "ABCDE-FGHIJ-KLMNO-PQRST"
DOC: dict[str, Any] = {
    "peer_id": PEER,
    "started": NOW - 3725,
    "versions": [
        {
            "name": "llama\x1b[31m",
            "version": 3,
            "bytes": 13_500_000_000,
            "origin": "published",
            "location": "/models/llama",
        }
    ],
    "transfers": [
        {
            "name": "mistral",
            "version": 7,
            "direction": "pull",
            "bytes_done": 250_000_000,
            "bytes_total": 1_000_000_000,
            "rate": 50_000_000.0,
            "peers": [
                {"id": "NASNA-AAAAA", "route": "direct", "via": "10.0.0.2:7450"},
                {"id": "EDGEE-BBBBB", "route": "relay", "via": "relay.example:7451"},
            ],
        }
    ],
    "peers": [
        {
            "id": "NASNA-AAAAA",
            "name": "nas",
            "route": "direct",
            "addr": "10.0.0.2:7450",
            "seen": NOW - 12,
        },
        {"id": "EDGEE-BBBBB", "name": "", "route": "relay", "addr": "", "seen": NOW - 600},
    ],
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "h"
    path.mkdir(mode=0o700)
    return path


async def status_handler(req: dict[str, Any]) -> Any:
    return DOC


@contextlib.asynccontextmanager
async def running(home: Path, handlers: Mapping[str, control.Handler]) -> AsyncIterator[Path]:
    """A control server for the block; cancelled (and its socket removed) after."""
    async with trio.open_nursery() as nursery:
        path: Path = await nursery.start(serve_control, home, handlers)
        yield path
        nursery.cancel_scope.cancel()


async def raw(path: Path, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes; a reset after the reply is fine."""
    out = b""
    async with await trio.open_unix_socket(os.fspath(path)) as stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)
            await stream.send_eof()
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(1 << 16):
                out += chunk
    return out


async def test_status_round_trip(home: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def status(req: dict[str, Any]) -> Any:
        seen.append(req)
        return DOC

    with trio.fail_after(10):
        async with running(home, {"status": status}) as path:
            assert path == socket_path(home)
            assert await request(home, "status", verbose=True) == DOC
            assert await request(home, "status") == DOC
    assert seen == [{"cmd": "status", "verbose": True}, {"cmd": "status"}]
    assert not path.exists(), "the socket file is removed on exit"


async def test_errors_are_replies_and_the_server_survives(home: Path) -> None:
    async def refuses(req: dict[str, Any]) -> Any:
        raise ConfigError("no such thing")

    async def crashes(req: dict[str, Any]) -> Any:
        raise ValueError("bug")

    async def not_json(req: dict[str, Any]) -> Any:
        return object()

    handlers = {"status": status_handler, "refuses": refuses, "crashes": crashes, "bad": not_json}
    with trio.fail_after(10):
        async with running(home, handlers) as path:
            with pytest.raises(P2pckptError, match="unknown command 'nope'") as info:
                await request(home, "nope")
            assert not isinstance(info.value, DaemonNotRunning)
            with pytest.raises(P2pckptError, match="no such thing"):
                await request(home, "refuses")
            for cmd in ("crashes", "bad"):
                with pytest.raises(P2pckptError, match="internal error"):
                    await request(home, cmd)
            for garbage in (b"not json\n", b"[1]\n", b'{"cmd": 5}\n', b"\n", b""):
                reply = json.loads(await raw(path, garbage))
                assert reply["ok"] is False and reply["error"]
            assert await request(home, "status") == DOC


async def test_oversize_request_line_is_refused_and_closed(home: Path) -> None:
    with trio.fail_after(10):
        async with running(home, {"status": status_handler}) as path:
            out = await raw(path, b"x" * (MAX_LINE + 1000))
            line, _, rest = out.partition(b"\n")
            assert json.loads(line) == {
                "ok": False,
                "error": f"request longer than {MAX_LINE} bytes",
            }
            assert rest == b"", "nothing after the error: the connection is closed"
            # Exactly MAX_LINE bytes (without the newline) is still accepted.
            head = b'{"cmd": "status", "pad": "'
            line = head + b"p" * (MAX_LINE - len(head) - 2) + b'"}'
            assert len(line) == MAX_LINE
            assert json.loads(await raw(path, line + b"\n")) == {"ok": True, "result": DOC}


async def test_request_timeout(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.2)

    async def hangs(req: dict[str, Any]) -> Any:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with running(home, {"hangs": hangs, "status": status_handler}) as path:
            with pytest.raises(P2pckptError, match="timed out"):
                await request(home, "hangs")
            # A client that never finishes its line is dropped too.
            async with await trio.open_unix_socket(os.fspath(path)) as stream:
                await stream.send_all(b'{"cmd": "sta')
                reply = await stream.receive_some(1 << 16)
            assert json.loads(reply)["error"].startswith("timed out")
            assert await request(home, "status") == DOC


async def test_at_most_max_clients(home: Path) -> None:
    release, all_inside = trio.Event(), trio.Event()
    inside = 0

    async def slow(req: dict[str, Any]) -> Any:
        nonlocal inside
        inside += 1
        if inside == MAX_CLIENTS:
            all_inside.set()
        await release.wait()
        return "done"

    results: list[Any] = []

    async def one() -> None:
        results.append(await request(home, "slow"))

    with trio.fail_after(10):
        async with running(home, {"slow": slow}):
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_CLIENTS):
                    nursery.start_soon(one)
                await all_inside.wait()
                with pytest.raises(P2pckptError, match="busy"):
                    await request(home, "slow")
                release.set()
            assert results == ["done"] * MAX_CLIENTS
            assert await request(home, "slow") == "done", "slots are given back"


async def test_permissions_from_creation(home: Path) -> None:
    with trio.fail_after(10):
        async with running(home, {"status": status_handler}) as path:
            run = path.parent
            st = run.lstat()
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
            assert st.st_uid == os.geteuid()
            sock = path.lstat()
            assert stat.S_ISSOCK(sock.st_mode)
            assert stat.S_IMODE(sock.st_mode) & 0o077 == 0, "socket not accessible to others"
            lock = (run / control.LOCK_NAME).lstat()
            assert stat.S_IMODE(lock.st_mode) & 0o077 == 0


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o500])
async def test_refuses_a_run_dir_with_other_permissions(home: Path, mode: int) -> None:
    run = home / control.RUN_DIR
    run.mkdir()
    run.chmod(mode)
    with trio.fail_after(10), pytest.raises(ConfigError, match="0700 directory"):
        await serve_control(home, {})


async def test_refuses_a_run_dir_that_is_a_link_or_not_ours(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (home / control.RUN_DIR).symlink_to(elsewhere)
    with trio.fail_after(10), pytest.raises(ConfigError, match="not a directory"):
        await serve_control(home, {})
    if os.geteuid() == 0:
        (home / control.RUN_DIR).unlink()
        (home / control.RUN_DIR).mkdir(mode=0o700)
        os.chown(home / control.RUN_DIR, NOBODY, NOBODY)
        with trio.fail_after(10), pytest.raises(ConfigError, match="owned by uid 0"):
            await serve_control(home, {})


async def test_missing_home_and_long_path(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(ConfigError, match="no node home"):
        await serve_control(tmp_path / "absent", {})
    long_home = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="Unix socket limit"):
        await serve_control(long_home, {})
    with pytest.raises(ConfigError, match="Unix socket limit"):
        await request(long_home, "status")


async def test_second_daemon_refuses(home: Path) -> None:
    with trio.fail_after(10):
        async with running(home, {"status": status_handler}) as path:
            with pytest.raises(ConfigError, match="already running"):
                await serve_control(home, {})
            assert path.exists(), "the loser must not remove the winner's socket"
            assert await request(home, "status") == DOC


async def test_refuses_when_something_answers_on_the_socket(home: Path) -> None:
    """Even without the lock (another version, a copied home): a live socket wins."""
    path = socket_path(home)
    path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(os.fspath(path))
        other.listen(1)
        with trio.fail_after(10), pytest.raises(ConfigError, match="already running"):
            await serve_control(home, {})
        assert path.exists()


async def test_stale_socket_is_replaced(home: Path) -> None:
    path = socket_path(home)
    path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(path))  # bound, then closed: what a crash leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with pytest.raises(DaemonNotRunning):
        await request(home, "status")
    with trio.fail_after(10):
        async with running(home, {"status": status_handler}):
            assert await request(home, "status") == DOC


async def test_refuses_a_non_socket_at_the_socket_path(home: Path) -> None:
    path = socket_path(home)
    path.parent.mkdir(mode=0o700)
    path.write_text("not a socket")
    with trio.fail_after(10), pytest.raises(ConfigError, match="not a socket"):
        await serve_control(home, {})
    assert path.read_text() == "not a socket"


async def test_request_without_daemon(home: Path) -> None:
    with trio.fail_after(10), pytest.raises(DaemonNotRunning) as info:
        await request(home, "status")
    assert str(info.value) == (f"no daemon running for {home} (start it with 'p2pckpt daemon')")
    assert info.value.exit_code == 11


async def test_request_rejects_a_malformed_reply(home: Path) -> None:
    path = socket_path(home)
    path.parent.mkdir(mode=0o700)
    for reply in (b"", b"garbage\n", b'{"result": 1}\n'):

        async def liar(stream: trio.SocketStream, reply: bytes = reply) -> None:
            await stream.receive_some(1 << 16)
            await stream.send_all(reply)

        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            await sock.bind(os.fspath(path))
            sock.listen(1)
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.serve_listeners, liar, [trio.SocketListener(sock)])
                    with pytest.raises(RemoteProtocolError):
                        await request(home, "status")
                    nursery.cancel_scope.cancel()
        path.unlink()


def test_uid_check() -> None:
    assert uid_allowed(1000, own_uid=1000)
    assert uid_allowed(0, own_uid=1000), "root may always connect"
    assert not uid_allowed(NOBODY, own_uid=1000)
    assert not uid_allowed(1001, own_uid=1000)
    assert uid_allowed(os.geteuid())
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.geteuid() == peer_uid(b)


# --- another local user (needs root to become nobody) ---------------------------------

_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"errno": e.errno}))
    sys.exit()
data = b""
try:
    s.sendall(b'{"cmd": "status"}\\n')  # EPIPE if the server already hung up
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    print(json.dumps({"errno": 0, "recv_errno": e.errno, "reply": data.decode()}))
    sys.exit()
print(json.dumps({"errno": 0, "reply": data.decode()}))
"""


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@cache
def _nobody_python() -> str | None:
    """A Python interpreter that uid nobody can run (a venv under /root is not one)."""
    for exe in dict.fromkeys([sys.executable, shutil.which("python3"), "/usr/bin/python3"]):
        if exe is None:
            continue
        try:
            probe = subprocess.run(
                [exe, "-I", "-c", "pass"], preexec_fn=_become_nobody, cwd="/", capture_output=True
            )
        except OSError:  # PermissionError from exec
            continue
        if probe.returncode == 0:
            return exe
    return None


@pytest.fixture
def shared_home() -> Iterator[Path]:
    """A home whose parents other users may traverse, so only run/'s 0700 stops them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    if _nobody_python() is None:
        pytest.skip("no Python interpreter that uid nobody can run")
    top = Path(tempfile.mkdtemp(prefix="p2pckpt-ctl-"))
    try:
        top.chmod(0o711)
        home = top / "h"
        home.mkdir(mode=0o711)
        yield home
    finally:
        shutil.rmtree(top)


async def _as_nobody(path: Path) -> dict[str, Any]:
    exe = _nobody_python()
    assert exe is not None
    proc = await trio.run_process(
        [exe, "-I", "-c", _CLIENT, os.fspath(path)],
        preexec_fn=_become_nobody,
        cwd="/",
        capture_stdout=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def test_other_uid_cannot_reach_the_socket(shared_home: Path) -> None:
    with trio.fail_after(20):
        async with running(shared_home, {"status": status_handler}) as path:
            assert await _as_nobody(path) == {"errno": errno.EACCES}
            assert await request(shared_home, "status") == DOC


async def test_other_uid_is_refused_by_peercred(shared_home: Path) -> None:
    """Should run/ or the socket ever be opened up, SO_PEERCRED still turns them away."""
    with trio.fail_after(20):
        async with running(shared_home, {"status": status_handler}) as path:
            path.parent.chmod(0o711)
            path.chmod(0o666)
            got = await _as_nobody(path)
            assert got["errno"] == 0, "the connection itself was allowed"
            assert got["reply"] == "", "closed without an answer"
            assert await request(shared_home, "status") == DOC


# --- the status command --------------------------------------------------------------


def test_format_status_shows_the_key_fields_and_escapes_names() -> None:
    out = format_status(DOC, NOW)
    assert "\x1b" not in out
    assert "'llama\\x1b[31m'@3" in out
    for needle in (
        f"daemon {PEER}, up 1h02m",
        "served versions (1):",
        "13.5 GB  published: /models/llama",
        "transfers in flight (1):",
        "mistral@7  pull  250.0 MB / 1.0 GB (25%)  50.0 MB/s  ETA 15s",
        "NASNA (nas)  direct via 10.0.0.2:7450",
        "EDGEE  relay via relay.example:7451",
        "known peers (2):",
        "NASNA (nas)  direct 10.0.0.2:7450  seen 12s ago",
        "EDGEE  relay  seen 10m00s ago",
    ):
        assert needle in out, (needle, out)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"versions": [], "transfers": [], "peers": []},
        {"peer_id": 5, "started": "x", "versions": "x", "transfers": [1, {"peers": 5}]},
        {"transfers": [{"bytes_done": 5, "bytes_total": 0, "rate": float("nan")}]},
        {"peers": [{"id": "\x07bell", "seen": None}], "versions": [{"bytes": -1}]},
    ],
)
def test_format_status_copes_with_missing_fields(doc: dict[str, Any]) -> None:
    out = format_status(doc, NOW)
    assert out.startswith("daemon ")
    assert "\x07" not in out
    if not doc.get("versions"):
        assert "served versions: none" in out


@contextlib.contextmanager
def daemon_thread(home: Path) -> Iterator[None]:
    """A control server on its own trio loop, for a synchronous CLI run."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, home, {"status": status_handler})
            box["token"] = trio.lowlevel.current_trio_token()
            box["scope"] = nursery.cancel_scope
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    try:
        assert ready.wait(10), "control server did not start"
        yield
    finally:
        if "scope" in box:
            trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(10)


def test_status_command(home: Path) -> None:
    import p2pckpt.cli.status_cmd  # noqa: F401  (registers the command)

    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(home), "status"])
    assert isinstance(result.exception, DaemonNotRunning)
    with daemon_thread(home):
        result = runner.invoke(cli, ["--home", str(home), "status", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == DOC
        result = runner.invoke(cli, ["status", "--home", str(home)])
        assert result.exit_code == 0, result.output
        assert f"daemon {PEER}" in result.output and "'llama\\x1b[31m'@3" in result.output
