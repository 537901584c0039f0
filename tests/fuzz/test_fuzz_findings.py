"""Regression tests for what fuzzing found (issue 13): each the minimal input
and the contract it broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pckpt import config
from p2pckpt.errors import ConfigError, RemoteProtocolError
from p2pckpt.wire import codec
from p2pckpt.wire import messages as m


def test_zero_copy_malformed_body_poisons_reader() -> None:
    """A malformed message completed through ``direct``/``advanced`` (the path
    RecordDecoder.commit_to uses) poisons the reader like one given to ``feed``."""
    frame = codec._pack(7, ["not_found", "no such chunk"])  # an Error needs 3 fields
    reader = codec.MessageReader(codec.CLIENT_ACCEPTS)
    assert reader.feed(frame[: codec.HEADER_SIZE]) == []
    body = frame[codec.HEADER_SIZE :]
    space = reader.direct(len(body))
    assert space is not None
    space[:] = body
    with pytest.raises(RemoteProtocolError):
        reader.advanced(len(body))
    with pytest.raises(RemoteProtocolError, match="already failed"):
        reader.feed(codec.encode(m.PushProgress(1, 2)))
    assert reader.direct(1) is None


@pytest.mark.parametrize(
    "port",
    [
        "\u00b2",  # a superscript two: str.isdigit() says yes, int() says ValueError
        "\u0663",  # an Arabic-Indic three: int() reads it as 3
        "1" * 5000,  # past int()'s 4300-digit limit: ValueError
    ],
)
def test_port_is_ascii_digits(port: str) -> None:
    """A port is at most five ASCII digits, else ConfigError (not a bare ValueError)."""
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config.parse_addr(f"host:{port}")


@pytest.mark.parametrize("nested", ["[" * 2000 + "]" * 2000, "{a=" * 2000 + "1" + "}" * 2000])
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, nested: str) -> None:
    """tomllib recurses once per nesting level; too deep is a ConfigError, not RecursionError."""
    path = tmp_path / "config.toml"
    path.write_text(f"x = {nested}\n")
    with pytest.raises(ConfigError, match=str(path)):
        config.load(tmp_path, path)
