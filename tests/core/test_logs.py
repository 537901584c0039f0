"""Log lines: splitting ``event key=value`` messages, and the one-line formatters."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from p2pckpt.logs import EscapeArgs, JsonFormatter, TextFormatter, split_event


def _record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("p2pckpt.serve", level, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("message", "event", "fields"),
    [
        (
            "pulled name=llama-ft version=5 downloaded=123 reused=0 seconds=1.25",
            "pulled",
            {
                "name": "llama-ft",
                "version": 5,
                "downloaded": 123,
                "reused": 0,
                "seconds": 1.25,
            },
        ),
        (
            "peer connected peer=ABCDE from=127.0.0.1:4001",
            "peer connected",
            {"peer": "ABCDE", "from": "127.0.0.1:4001"},
        ),
        (
            'connection ended from=10.0.0.2:5 error="handshake timed out: no reply"',
            "connection ended",
            {"from": "10.0.0.2:5", "error": "handshake timed out: no reply"},
        ),
        (
            'refused push name="my model" version=-3 from=ABCDE (no push role)',
            "refused push",
            {"name": "my model", "version": -3, "from": "ABCDE"},
        ),
        (
            'relay connection ended relay=r.lan:7451 error="bad x=1 inside quotes"',
            "relay connection ended",
            {"relay": "r.lan:7451", "error": "bad x=1 inside quotes"},
        ),
        ("trust store reloaded", "trust store reloaded", {}),
        ("shutting down", "shutting down", {}),
        ("", "", {}),
    ],
)
def test_split_event(message: str, event: str, fields: dict[str, object]) -> None:
    """The words before the first key=value are the event; ints become ints,
    quoted values lose their quotes, and a message without fields is all event."""
    assert split_event(message) == (event, fields)


def test_split_event_keeps_big_and_odd_numbers_as_text() -> None:
    """Only plain integers of up to 18 digits are converted."""
    _, fields = split_event("x a=0123 b=1e3 c=1234567890123456789 d=12")
    assert fields == {"a": 123, "b": "1e3", "c": "1234567890123456789", "d": 12}


def test_split_event_numbers_are_numbers_and_text_stays_text() -> None:
    """Whole numbers and decimals become JSON numbers; a quoted value, a
    version-like "1.2.3" or an address stay strings (issue 19)."""
    _, fields = split_event(
        'x rate=12.5 neg=-0.25 n=7 q="42" v=1.2.3 addr=10.0.0.1:80 dot=1. lead=.5'
    )
    assert fields == {
        "rate": 12.5,
        "neg": -0.25,
        "n": 7,
        "q": "42",
        "v": "1.2.3",
        "addr": "10.0.0.1:80",
        "dot": "1.",
        "lead": ".5",
    }
    record = _record("pulled name=%s downloaded=%d seconds=%.2f", "m", 123, 1.5)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["fields"] == {"name": "m", "downloaded": 123, "seconds": 1.5}


def test_split_event_empty_values() -> None:
    _, fields = split_event('x a= b="" c=1')
    assert fields == {"a": "", "b": "", "c": 1}


def test_json_formatter_one_line_with_event_and_fields() -> None:
    """A message with line breaks in a value still makes exactly one JSON line."""
    record = _record(
        'refused connection peer=%s from=%s error="%s"',
        "ABCDE",
        "127.0.0.1:4001",
        "peer is\nnot trusted\r\nat all",
        level=logging.WARNING,
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["logger"] == "p2pckpt.serve"
    assert doc["event"] == "refused connection"
    assert doc["fields"] == {
        "peer": "ABCDE",
        "from": "127.0.0.1:4001",
        "error": "peer is\nnot trusted\r\nat all",
    }
    assert doc["msg"] == record.getMessage()
    assert isinstance(doc["ts"], float)
    assert "exc" not in doc


def test_json_formatter_without_fields_and_with_a_traceback() -> None:
    """No ``fields`` key for a bare event; a traceback goes in ``exc``, still one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("control client failed", level=logging.ERROR)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["event"] == "control client failed" and "fields" not in doc
    assert doc["level"] == "error"
    assert "Traceback" in doc["exc"] and "ValueError: boom" in doc["exc"]


def test_text_formatter_escapes_line_breaks() -> None:
    """A forged second line (a peer-supplied string) stays on the record's line."""
    record = _record(
        'connection ended from=%s error="%s"',
        "10.0.0.2:5",
        "bye\n2026-01-01 00:00:00 INFO p2pckpt.serve: fake\r\\end",
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith(
        'INFO p2pckpt.serve: connection ended from=10.0.0.2:5 error="bye\\n'
        '2026-01-01 00:00:00 INFO p2pckpt.serve: fake\\r\\\\end"'
    )


def test_text_formatter_one_line_traceback() -> None:
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        record = _record("control command failed command=%s", "status", level=logging.ERROR)
        record.exc_info = sys.exc_info()
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "ERROR p2pckpt.serve: control command failed command=status\\nTraceback" in line
    assert "RuntimeError: bug" in line


def test_a_quote_in_a_string_argument_cannot_fake_fields() -> None:
    """A peer's error text with quotes and key=value inside stays one value."""
    hostile = 'nope" level=critical admin="yes'
    record = logging.LogRecord(
        "p2pckpt.serve",
        logging.INFO,
        __file__,
        1,
        'peer skipped peer=%s error="%s"',
        ("x", hostile),
        None,
    )
    EscapeArgs().filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["fields"] == {"peer": "x", "error": hostile}
