"""``p2pckpt status``: ask the running daemon what it serves, pulls and sees.

The document comes from another process, so the printer trusts none of it:
any field may be missing or of the wrong type, and every string goes through
``safe_display`` before reaching the terminal (R-41).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import click

from p2pckpt.cli.common import command, emit_json, home_path, human
from p2pckpt.manifest.paths import safe_display


@command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status document.")
def status(as_json: bool) -> None:
    """Show the daemon's peer ID, served versions, transfers, known peers,
    and each follow and watch (last version, last error, last hook)."""
    import trio

    from p2pckpt.daemon.control import request

    doc = trio.run(request, home_path(), "status")
    if as_json:
        emit_json(doc)
    else:
        click.echo(format_status(doc if isinstance(doc, Mapping) else {}, time.time()))


def _str(d: Mapping[str, object], key: str, default: str = "?") -> str:
    value = d.get(key)
    return safe_display(value) if isinstance(value, str) and value else default


def _num(d: Mapping[str, object], key: str) -> float | None:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


def _list(d: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    value = d.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _bytes(n: float | None) -> str:
    return "?" if n is None or n < 0 or n == float("inf") else human(int(n))


def _duration(seconds: float | None) -> str:
    """A short human duration: 45s, 3m05s, 2h03m, 4d01h."""
    if seconds is None or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ref(d: Mapping[str, object]) -> str:
    version = _num(d, "version")
    return f"{_str(d, 'name')}@{int(version) if version is not None else '?'}"


def _short(peer_id: str) -> str:
    """The first group of a peer ID, as in logs (the full ID is in --json)."""
    return peer_id.split("-", 1)[0][:8]


def _who(peer: Mapping[str, object], names: Mapping[str, str]) -> str:
    raw = peer.get("id")
    pid = raw if isinstance(raw, str) and raw else ""
    label = _short(safe_display(pid)) if pid else "?"
    name = _str(peer, "name", "") or names.get(pid, "")
    return f"{label} ({name})" if name else label


def _version_line(v: Mapping[str, object]) -> str:
    line = f"  {_ref(v)}  {_bytes(_num(v, 'bytes'))}  {_str(v, 'origin')}"
    location = _str(v, "location", "")
    return f"{line}: {location}" if location else line


def _transfer_lines(t: Mapping[str, object], names: Mapping[str, str]) -> list[str]:
    done, total, rate = _num(t, "bytes_done"), _num(t, "bytes_total"), _num(t, "rate")
    progress = f"{_bytes(done)} / {_bytes(total)}"
    if done is not None and total:
        progress += f" ({min(100.0, 100 * done / total):.0f}%)"
    speed = f"{rate / 1e6:.1f} MB/s" if rate is not None else "? MB/s"
    eta = "?"
    if done is not None and total is not None and rate is not None and rate > 0:
        eta = _duration(max(0.0, total - done) / rate)
    if t.get("paused") is True:
        speed, eta = "paused", "-"
    lines = [f"  {_ref(t)}  {_str(t, 'direction')}  {progress}  {speed}  ETA {eta}"]
    for p in _list(t, "peers"):
        via = _str(p, "via", "")
        lines.append(f"    {_who(p, names)}  {_str(p, 'route')}" + (f" via {via}" if via else ""))
    return lines


def _peer_line(p: Mapping[str, object], now: float) -> str:
    seen = _num(p, "seen")
    when = f"seen {_duration(now - seen)} ago" if seen is not None else "never seen"
    addr = _str(p, "addr", "")
    route = _str(p, "route", "-") + (f" {addr}" if addr else "")
    if p.get("inbound") is True:
        route += " (it connected to us)"
    release = _str(p, "release", "")
    if release:  # heard in a Hello; "no hello" is a 0.1.0 node
        said = _num(p, "protocol")
        when += f"  release {release}" + (f" (protocol {int(said)})" if said else " (no hello)")
    return f"  {_who(p, {})}  {route}  {when}"


def _list_of_str(d: Mapping[str, object], key: str) -> list[str]:
    value = d.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _ago(d: Mapping[str, object], key: str, now: float) -> str:
    at = _num(d, key)
    return f"{_duration(now - at)} ago" if at is not None else "never"


def _int_or(d: Mapping[str, object], key: str, default: str = "none") -> str:
    value = _num(d, key)
    return str(int(value)) if value is not None else default


def _error_line(d: Mapping[str, object], now: float) -> list[str]:
    error = _str(d, "last_error", "")
    if not error:
        return []
    when = _ago(d, "last_error_at", now)
    if (_num(d, "last_ok_at") or 0) > (_num(d, "last_error_at") or 0):
        when += "; checks have succeeded since"  # an old error is not a current problem
    return [f"    last error ({when}): {error}"]


def _follow_lines(f: Mapping[str, object], now: float) -> list[str]:
    line = f"  {_str(f, 'name')}  current {_int_or(f, 'current')}"
    if _num(f, "pinned") is not None:
        line += f" (pinned at {_int_or(f, 'pinned')})"
    line += f"  last version {_int_or(f, 'last_version')}  checked {_ago(f, 'last_check', now)}"
    if f.get("paused") is True:
        line += "  PAUSED ('p2pckpt resume' to go on)"
    lines = [line]
    hook = f.get("hook")
    if isinstance(hook, Mapping):
        code = _num(hook, "code")
        what = f"exit {int(code)}" if code is not None else f"failed: {_str(hook, 'error')}"
        lines.append(
            f"    last hook: version {_int_or(hook, 'version', '?')} {what}"
            f" ({_ago(hook, 'at', now)})"
        )
    return lines + _error_line(f, now)


def _watch_lines(w: Mapping[str, object], now: float) -> list[str]:
    line = (
        f"  {_str(w, 'name')}  {_str(w, 'path')}  last version {_int_or(w, 'last_version')}"
        f" (published {_ago(w, 'last_published', now)})"
    )
    return [line, *_error_line(w, now)]


def _section(title: str, lines: list[str], count: int) -> list[str]:
    return [f"{title} ({count}):", *lines] if count else [f"{title}: none"]


def format_status(doc: Mapping[str, object], now: float) -> str:
    """The human view of a status document (see ``p2pckpt.daemon.control``)."""
    started = _num(doc, "started")
    uptime = _duration(now - started) if started is not None else "?"
    out = [f"daemon {_str(doc, 'peer_id')}, up {uptime}"]
    if "release" in doc:
        features = ", ".join(str(f) for f in _list_of_str(doc, "features"))
        out.append(
            f"release {_str(doc, 'release')}, protocol {_int_or(doc, 'protocol', '?')}"
            f" (features: {features or 'none'})"
        )
    peers = _list(doc, "peers")
    names = {
        pid: name
        for p in peers
        if isinstance(pid := p.get("id"), str) and (name := _str(p, "name", ""))
    }
    versions = _list(doc, "versions")
    out += _section("served versions", [_version_line(v) for v in versions], len(versions))
    transfers = _list(doc, "transfers")
    lines = [line for t in transfers for line in _transfer_lines(t, names)]
    out += _section("transfers in flight", lines, len(transfers))
    out += _section("known peers", [_peer_line(p, now) for p in peers], len(peers))
    follows = _list(doc, "follows")
    lines = [line for f in follows for line in _follow_lines(f, now)]
    out += _section("follows", lines, len(follows))
    watches = _list(doc, "watches")
    lines = [line for w in watches for line in _watch_lines(w, now)]
    out += _section("watches", lines, len(watches))
    return "\n".join(out)
