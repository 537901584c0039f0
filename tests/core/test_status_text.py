"""`status`'s text for a follow's last error: an error that later checks got
past says so, instead of reading as a current problem."""

from __future__ import annotations

from p2pckpt.cli.status_cmd import _error_line


def test_a_current_error_reads_as_one() -> None:
    line = _error_line({"last_error": "peer gone", "last_error_at": 100.0, "last_ok_at": 50.0}, 160)
    assert line == ["    last error (1m00s ago): peer gone"]


def test_an_error_resolved_since_says_so() -> None:
    doc = {"last_error": "no checkpoint m is offered here", "last_error_at": 100.0}
    line = _error_line({**doc, "last_ok_at": 130.0}, 160)
    assert line == [
        "    last error (1m00s ago; checks have succeeded since): no checkpoint m is offered here"
    ]
    assert _error_line({"last_error": "", "last_ok_at": 130.0}, 160) == []
