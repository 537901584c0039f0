"""The TOML config: ``config.load`` on any file content.

Contract (config.py): a ``Config`` or ``ConfigError`` naming the file, never
any other exception (the CLI prints a ConfigError as one line; anything else
is a traceback). Also checked: a loaded config has the documented types.

Input: the file's bytes.
"""

from __future__ import annotations

from pathlib import Path, PosixPath

from p2pckpt import config
from p2pckpt.errors import ConfigError
from tests.fuzz.contract import check_refusal
from tests.fuzz.values import OTHER

NAME = "config"
MAX_LEN = 8192
INSTRUMENT = ("tomllib",)  # its branches guide the fuzzer into TOML syntax


class _File(PosixPath):
    """A path whose content is the fuzz input: ``load`` runs unchanged, with no disk I/O."""

    content = b""

    def read_bytes(self) -> bytes:
        return self.content


_HOME = Path("/nonexistent-p2pckpt-fuzz-home")


def one_input(data: bytes) -> None:
    path = _File("/fuzz/config.toml")
    path.content = data
    try:
        cfg = config.load(_HOME, path)
    except ConfigError as exc:
        check_refusal(exc)
        return
    assert isinstance(cfg, config.Config)
    config.parse_addr(cfg.listen, allow_zero=True)
    assert all(isinstance(i, str) for i in cfg.interfaces)
    assert cfg.upload >= 0 and cfg.download >= 0 and cfg.compress in config.COMPRESS_MODES
    for spec in cfg.watch:
        assert spec.complete in config.COMPLETE_RULES and 0 < spec.stable_seconds <= 86400
    for follow in cfg.follow:
        assert follow.keep >= 1 and all(isinstance(a, str) and a for a in follow.hook)
    for peer in cfg.peers:
        assert peer.addrs and all(1 <= port <= 65535 for _, port in peer.addrs)


_FULL = f"""
[serve]
listen = "0.0.0.0:7450"

[discovery]
mdns = true
interfaces = ["eth0", "10.0.0.1"]

[relay]
addr = "relay.example.org:7451"

[[peer]]
id = "{OTHER.peer_id}"
addr = ["10.0.0.5:7450", "[fe80::1]:7450"]
name = "nas"

[[watch]]
path = "/srv/ckpt/llama-ft"
name = "llama-ft"
complete = "marker"
stable_seconds = 2.5
marker = "COMPLETE"
keep = 2

[[follow]]
name = "llama-ft"
dir = "/srv/models"
keep = 3
hook = ["/usr/local/bin/reload-server", "--now"]
publishers = ["nas"]
allow_expired = false

[limits]
upload = 1000000
download = 0

[metrics]
listen = "127.0.0.1:9450"

[transfer]
compress = "off"
"""


def seeds() -> list[bytes]:
    """The documented example with every section, small variants, and the shapes
    of what review found (fuzzing alone did not reach them in 10^6 runs)."""
    return [
        _FULL.encode(),
        b"",
        b'[serve]\nlisten = "[::1]:0"\n',
        f'[[peer]]\nid = "{OTHER.peer_id}"\naddr = "h:1"\n'.encode(),
        b'[[follow]]\nname = "a"\ndir = "d"\nhook = "x"\n',
        b"[[watch]]\npath = 'p'\nname = 'n'\nstable_seconds = 30\n",
        b"x = [[[1, {a = [2]}]]]\n",  # nesting: tomllib recurses per level (a finding)
        '[metrics]\nlisten = "h:\u0663"\n'.encode(),  # a non-ASCII digit (a finding)
    ]
