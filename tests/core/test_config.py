"""Config parsing: defaults, layering, and unknown keys as errors."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import nacl.signing
import pytest

from p2pckpt.config import Config, load, parse, parse_size
from p2pckpt.errors import ConfigError
from p2pckpt.identity.keys import NodeKey

PEER = str(NodeKey(nacl.signing.SigningKey(bytes(32))).peer_id)  # fixed: one test ID per run


def test_defaults_when_absent(tmp_path: Path) -> None:
    """No config file means the defaults."""
    assert load(tmp_path) == Config()


def test_full_file(tmp_path: Path) -> None:
    """Every section parses into typed values."""
    (tmp_path / "config.toml").write_text(
        f"""
[serve]
listen = "127.0.0.1:0"
[discovery]
mdns = false
interfaces = ["eth0", "10.0.0.1"]
[relay]
addr = "relay.lan:7451"
[[peer]]
id = "{PEER}"
addr = ["10.0.0.5:7450", "[fd00::5]:7450"]
name = "nas"
"""
    )
    cfg = load(tmp_path)
    assert cfg.listen == "127.0.0.1:0" and cfg.mdns is False
    assert cfg.interfaces == ("eth0", "10.0.0.1") and cfg.relay == ("relay.lan", 7451)
    assert cfg.static_addrs(cfg.peers[0].peer) == [("10.0.0.5", 7450), ("fd00::5", 7450)]


@pytest.mark.parametrize(
    "text",
    [
        "[serve]\nlistne = '0.0.0.0:1'",  # typo
        "[nonsense]\nx = 1",
        "[discovery]\nmdns = 'yes'",
        "[relay]\naddr = 'nohost'",
        "[[peer]]\naddr = '1.2.3.4:5'",  # no id
        f"[[peer]]\nid = '{PEER}'",  # no addr
        "[[peer]]\nid = 'NOT-AN-ID'\naddr = '1.2.3.4:5'",
        "serve = 3",
    ],
)
def test_bad_files_are_errors(text: str) -> None:
    """Typos, wrong types and bad values are ConfigErrors, never ignored."""
    with pytest.raises(ConfigError):
        parse(tomllib.loads(text))


def test_flags_override_file() -> None:
    """A flag given on the command line wins; an absent one (None) does not."""
    cfg = Config(listen="1.2.3.4:5").with_flags(listen=None, mdns=False)
    assert cfg.listen == "1.2.3.4:5" and cfg.mdns is False


def test_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    """A broken file names itself in the error."""
    (tmp_path / "config.toml").write_text("[serve\n")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load(tmp_path)


def test_watch_and_follow_sections() -> None:
    """Daemon sections parse into typed specs with defaults."""
    cfg = parse(
        tomllib.loads(
            """
[[watch]]
path = "/srv/ckpt/llama-ft"
name = "llama-ft"
complete = "marker"
[[follow]]
name = "llama-ft"
dir = "/srv/models"
hook = ["/usr/bin/reload", "--graceful"]
[limits]
upload = 100000000
[metrics]
listen = "127.0.0.1:9450"
"""
        )
    )
    (w,) = cfg.watch
    (f,) = cfg.follow
    assert (w.name, w.complete, w.stable_seconds, w.marker) == (
        "llama-ft",
        "marker",
        30.0,
        "COMPLETE",
    )
    assert (f.name, str(f.dir), f.keep, f.hook) == (
        "llama-ft",
        "/srv/models",
        3,
        ("/usr/bin/reload", "--graceful"),
    )
    assert cfg.upload == 100_000_000 and cfg.metrics == ("127.0.0.1", 9450)


@pytest.mark.parametrize(
    "text",
    [
        "[[watch]]\npath = '/x'",  # no name
        "[[watch]]\npath = '/x'\nname = 'a'\ncomplete = 'soon'",
        "[[watch]]\npath = '/x'\nname = 'a'\nstable_seconds = -1",
        "[[watch]]\npath = '/x'\nname = 'bad name'",
        "[[follow]]\nname = 'a'\ndir = '/m'\nhook = 'rm -rf /'\nkeep = 0",
        "[[follow]]\nname = 'a'\ndir = '/m'\nhook = [1]",
        "[[follow]]\nname = 'a'\ndir = '/m'\n[[follow]]\nname = 'a'\ndir = '/n'",
        "[limits]\nupload = -5",
        "[[follow]]\nname = 'a'\ndir = '/m'\nkepp = 3",
        "[web]\nread_only = true",  # no listen
        "[web]\nlisten = '7460'",
        "[web]\nlisten = '127.0.0.1:7460'\nread_only = 'yes'",
        "[web]\nlisten = '127.0.0.1:7460'\nhosts = ['nas.lan:80']",
        "[web]\nlisten = '127.0.0.1:7460'\nhosts = 'nas.lan'",
        "[web]\nlisten = '127.0.0.1:7460'\npull_dir = 'relative/dir'",
        "[web]\nlisten = '127.0.0.1:7460'\ntoken = 'x'",
    ],
)
def test_bad_daemon_sections(text: str) -> None:
    """Every daemon key is checked; the error names it."""
    with pytest.raises(ConfigError):
        parse(tomllib.loads(text))


def test_transfer_compress() -> None:
    """[transfer] compress is "auto" (the default) or "off"; anything else is an error."""
    assert Config().compress == "auto"
    assert parse(tomllib.loads('[transfer]\ncompress = "off"\n')).compress == "off"
    assert parse(tomllib.loads('[transfer]\ncompress = "auto"\n')).compress == "auto"
    for bad in ('compress = "zstd"', "compress = false", 'compress = "OFF"', "level = 3"):
        with pytest.raises(ConfigError, match="transfer"):
            parse(tomllib.loads(f"[transfer]\n{bad}\n"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text: str, seconds: int) -> None:
    from p2pckpt.config import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0d", "soon", "-5m", "1.5h", "7 days", "9999999999d"])
def test_bad_durations(text: str) -> None:
    from p2pckpt.config import parse_duration

    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


def test_follow_publishers_and_expiry_policy() -> None:
    """``publishers`` is a list of IDs or names; ``allow_expired`` a bool."""
    cfg = parse(
        {"follow": [{"name": "m", "dir": "/m", "publishers": ["nas"], "allow_expired": True}]}
    )
    assert cfg.follow[0].publishers == ("nas",)
    assert cfg.follow[0].allow_expired
    assert parse({"follow": [{"name": "m", "dir": "/m"}]}).follow[0].publishers == ()
    for bad in (
        {"publishers": "nas"},
        {"publishers": [1]},
        {"publishers": [""]},
        {"allow_expired": "yes"},
    ):
        with pytest.raises(ConfigError):
            parse({"follow": [{"name": "m", "dir": "/m", **bad}]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1500", 1500),
        ("10M", 10_000_000),
        ("10MB", 10_000_000),
        ("10mb/s", 10_000_000),
        ("10 M", 10_000_000),
        ("50kB", 50_000),
        ("1.5G", 1_500_000_000),
        ("2T", 2 * 10**12),
        ("10MiB", 10 * 2**20),
        ("10Mi", 10 * 2**20),
        ("1KiB", 1024),
        ("1GiB", 2**30),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    """K, M, G, T (with or without B) are powers of 1000; KiB, MiB... of 1024."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "M", "-5", "10X", "10iB", "1.5", "10 MB/h", "1e6", "99999999T"]
)
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_limits_take_units() -> None:
    """`upload = "50MB"` in [limits]; plain integers keep working; a bad unit names the key."""
    cfg = parse(
        tomllib.loads('[limits]\nupload = "50MB"\nupload_per_peer = "1MiB"\ndownload = 7\n')
    )
    assert (cfg.upload, cfg.upload_per_peer, cfg.download) == (50_000_000, 2**20, 7)
    with pytest.raises(ConfigError, match=r"limits\.download"):
        parse(tomllib.loads('[limits]\ndownload = "fast"\n'))


def test_config_file_is_laid_over_the_homes(tmp_path: Path) -> None:
    """--config FILE adds to HOME/config.toml: its keys win, table by table and
    key by key; an array of tables in FILE replaces the home's; each file is
    checked alone, and an error names the file."""
    (tmp_path / "config.toml").write_text(
        '[discovery]\nmdns = false\ninterfaces = ["eth0"]\n[limits]\nupload = "1M"\n'
        '[[follow]]\nname = "a"\ndir = "/m"\n[relay]\naddr = "r.example:1"\n'
    )
    extra = tmp_path / "extra.toml"
    extra.write_text(
        '[discovery]\nmdns = true\n[limits]\ndownload = 5\n[[follow]]\nname = "b"\ndir = "/n"\n'
    )
    cfg = load(tmp_path, extra)
    assert cfg.mdns is True and cfg.interfaces == ("eth0",)
    assert (cfg.upload, cfg.download) == (1_000_000, 5)
    assert [f.name for f in cfg.follow] == ["b"]
    assert cfg.relay == ("r.example", 1)
    assert load(tmp_path) == replace(cfg, mdns=False, download=0, follow=load(tmp_path).follow)
    extra.write_text("[limits]\nuplaod = 1\n")
    with pytest.raises(ConfigError, match=r"extra\.toml"):
        load(tmp_path, extra)
    with pytest.raises(ConfigError, match="no config file"):
        load(tmp_path, tmp_path / "absent.toml")
    (tmp_path / "config.toml").unlink()
    extra.write_text("[limits]\nupload = 7\n")
    assert load(tmp_path, extra) == Config(upload=7)


def test_web_is_off_unless_configured() -> None:
    assert parse({}).web is None
    cfg = parse(tomllib.loads('[web]\nlisten = "127.0.0.1:7460"\nhosts = ["nas.lan", "[::1]"]'))
    assert (cfg.web, cfg.web_read_only, cfg.web_hosts) == (
        ("127.0.0.1", 7460),
        False,
        ("nas.lan", "[::1]"),
    )
    assert parse({"web": {"listen": "127.0.0.1:0", "read_only": True}}).web_read_only
