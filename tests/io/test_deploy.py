"""The files in deploy/: the example config parses, the units are hardened and valid.

``systemd-analyze verify`` runs when the binary exists. The units name
``/usr/bin/p2pckpt`` and the user ``p2pckpt``, which a test machine lacks, so
the check runs on copies pointed at this interpreter's ``p2pckpt`` and at
``nobody``. systemd has no end-of-line comments (a ``#`` after a value is part
of the value), so every option's reason must be on the line above it.
"""

from __future__ import annotations

import grp
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from p2pckpt.config import _SCHEMA, parse

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "config.example.toml"
DAEMON_UNIT = DEPLOY / "systemd" / "p2pckpt.service"
RELAY_UNIT = DEPLOY / "systemd" / "p2pckpt-relay.service"

ACTIVE_KEY = re.compile(r"^([a-z_]+)\s*=")
LEFT_OFF = re.compile(r"^#(?=[a-z_\[])")  # "#key = ..." / "#[[table]]": a setting left off
COMMENTED_KEY = re.compile(r"^#([a-z_]+)\s*=")

HARDENING = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("UMask", "0077"),
    ("LimitNOFILE", "65536"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("Restart", "on-failure"),
    ("RestartSec", "5"),
    ("TimeoutStopSec", "15"),
    ("KillSignal", "SIGTERM"),
]
DAEMON_ONLY = [
    ("User", "p2pckpt"),
    ("Group", "p2pckpt"),
    ("Environment", "P2PCKPT_HOME=/var/lib/p2pckpt"),
    ("StateDirectory", "p2pckpt"),
    ("StateDirectoryMode", "0700"),
    ("ExecStart", "/usr/bin/p2pckpt daemon --config /etc/p2pckpt/config.toml"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
]
RELAY_ONLY = [
    ("DynamicUser", "yes"),
    ("ExecStart", "/usr/bin/p2pckpt relay --listen 0.0.0.0:7451"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
]


def uncommented(text: str) -> str:
    """The example with every setting that was left off switched on."""
    return "\n".join(LEFT_OFF.sub("", line) for line in text.splitlines())


def unit_options(path: Path) -> list[tuple[int, str, str]]:
    """``(line index, key, value)`` for each option line of a unit file."""
    options = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}:{i + 1}: not KEY=VALUE: {line!r}"
            options.append((i, key.strip(), value.strip()))
    return options


def test_example_config_parses_and_watches_a_folder() -> None:
    """The example is valid config as shipped, and publishes at least one folder."""
    cfg = parse(tomllib.loads(EXAMPLE.read_text()))
    assert cfg.watch
    assert cfg.watch[0].path == Path("/srv/ckpt/llama-ft")


def test_example_config_shows_every_key_and_its_left_off_settings_parse() -> None:
    """Switching on every left-off setting still parses, and then every key appears."""
    doc = tomllib.loads(uncommented(EXAMPLE.read_text()))
    cfg = parse(doc)
    assert cfg.relay and cfg.peers and cfg.follow and cfg.metrics
    for section, keys in _SCHEMA.items():
        tables = doc[section] if isinstance(doc[section], list) else [doc[section]]
        shown = set().union(*(t.keys() for t in tables))
        assert keys <= shown, f"[{section}] lacks {sorted(keys - shown)} in the example"


def test_every_example_key_has_a_comment() -> None:
    """Each key line, set or left off, has a comment on the line above or after its value."""
    lines = EXAMPLE.read_text().splitlines()
    keys = 0
    for i, line in enumerate(lines):
        match = ACTIVE_KEY.match(line) or COMMENTED_KEY.match(line)
        if not match:
            continue
        keys += 1
        above = lines[i - 1] if i else ""
        inline = ACTIVE_KEY.match(line) and "#" in line.partition("=")[2]
        assert above.startswith("# ") or inline, f"line {i + 1}: {match[1]} is undocumented"
    assert keys >= sum(map(len, _SCHEMA.values()))


@pytest.mark.parametrize(
    ("unit", "required"),
    [(DAEMON_UNIT, HARDENING + DAEMON_ONLY), (RELAY_UNIT, HARDENING + RELAY_ONLY)],
    ids=["daemon", "relay"],
)
def test_units_are_hardened_and_every_option_has_a_reason(
    unit: Path, required: list[tuple[str, str]]
) -> None:
    """The unit sets each hardening option, and each option line has a comment above it."""
    lines = unit.read_text().splitlines()
    options = unit_options(unit)
    present = {(key, value) for _, key, value in options}
    missing = [f"{k}={v}" for k, v in required if (k, v) not in present]
    assert not missing, f"{unit.name} lacks {missing}"
    for i, key, value in options:
        assert "#" not in value, f"{unit.name}:{i + 1}: '#' inside {key}= is not a comment"
        assert lines[i - 1].startswith("#"), f"{unit.name}:{i + 1}: {key}= has no reason above"


def test_daemon_unit_writes_only_its_home_and_checkpoint_dirs() -> None:
    """The daemon may write its home and the watched/followed dirs; the relay nothing."""
    daemon = {k: v for _, k, v in unit_options(DAEMON_UNIT)}
    assert daemon["ReadWritePaths"].split() == ["/var/lib/p2pckpt", "-/srv/ckpt", "-/srv/models"]
    relay = {k for _, k, _ in unit_options(RELAY_UNIT)}
    assert not relay & {"ReadWritePaths", "StateDirectory", "User", "Group"}


def _verify_copy(unit: Path, dest: Path) -> Path:
    """A copy that names an existing binary and user, as verify insists on both."""
    exe = shutil.which("p2pckpt", path=os.path.dirname(sys.executable)) or sys.executable
    try:
        group = grp.getgrnam("nogroup").gr_name
    except KeyError:
        group = "nobody"
    text = unit.read_text().replace("/usr/bin/p2pckpt", exe)
    text = re.sub(r"(?m)^User=p2pckpt$", "User=nobody", text)
    text = re.sub(r"(?m)^Group=p2pckpt$", f"Group={group}", text)
    copy = dest / unit.name
    copy.write_text(text)
    return copy


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd) - units not verified",
)
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """systemd-analyze verify reports nothing about either unit."""
    copies = [_verify_copy(u, tmp_path) for u in (DAEMON_UNIT, RELAY_UNIT)]
    done = subprocess.run(
        ["systemd-analyze", "verify", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
        check=False,
    )
    output = done.stdout + done.stderr
    about_ours = [line for line in output.splitlines() if any(c.name in line for c in copies)]
    bad = [line for line in about_ours if re.search(r"unknown key|failed", line, re.I)]
    assert done.returncode == 0 and not bad, output


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, mmap, struct, sys
    # systemd's MemoryDenyWriteExecute=yes as a seccomp filter (x86-64): EPERM for
    # mmap(PROT_WRITE|PROT_EXEC), mprotect/pkey_mprotect(PROT_EXEC), shmat(SHM_EXEC).
    ERR, OK = 0x00050001, 0x7FFF0000
    prog = [(0x20,0,0,4),(0x15,1,0,0xC000003E),(0x06,0,0,OK),(0x20,0,0,0),
            (0x15,4,0,9),(0x15,6,0,10),(0x15,5,0,329),(0x15,7,0,30),(0x06,0,0,OK),
            (0x20,0,0,32),(0x54,0,0,6),(0x15,6,7,6),
            (0x20,0,0,32),(0x54,0,0,4),(0x15,3,4,4),
            (0x20,0,0,32),(0x54,0,0,0o100000),(0x15,0,1,0o100000),
            (0x06,0,0,ERR),(0x06,0,0,OK)]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
        sys.exit(77)  # no seccomp here
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("filter not effective: W+X mapping allowed")
    except OSError:
        pass

    import blake3, ifaddr, nacl.signing, sqlite3, trio, zeroconf
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    import p2pckpt.cli.main, p2pckpt.daemon.app, p2pckpt.daemon.watch
    import p2pckpt.relay.server

    X25519PrivateKey.generate().exchange(X25519PrivateKey.generate().public_key())
    AESGCM(AESGCM.generate_key(256)).encrypt(bytes(12), b"x" * 65536, None)
    ChaCha20Poly1305(ChaCha20Poly1305.generate_key()).encrypt(bytes(12), b"x", None)
    key = nacl.signing.SigningKey.generate()
    key.verify_key.verify(key.sign(b"m"))
    blake3.blake3(bytes(8 << 20), max_threads=blake3.blake3.AUTO).digest()
    ifaddr.get_adapters()                         # ctypes, as mDNS does
    ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 0)()   # a ctypes closure (libffi)
    zeroconf.Zeroconf(interfaces=["127.0.0.1"]).close()
    sqlite3.connect(":memory:").execute("select 1")
    trio.run(trio.to_thread.run_sync, lambda: None)
    print("ok")
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the probe's seccomp filter is written for Linux x86-64",
)
def test_dependencies_run_without_write_execute_memory() -> None:
    """What the daemon and relay load works under MemoryDenyWriteExecute=yes."""
    done = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode == 77:
        pytest.skip("seccomp filters are not available in this sandbox")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
