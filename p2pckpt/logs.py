"""Log lines: one event per line, as text or as JSON.

Log messages are written as ``event key=value key=value`` (for example
``pulled name=llama-ft version=5 downloaded=123``). The text format prints
them as they are, after the time, level and logger; the JSON format
(``--log-format json``, for journald, Loki or jq) also splits them into
``event`` and ``fields``. Either way a record is exactly one line: any line
break in a message (a peer-supplied string, a traceback) is escaped.

In JSON, a field that is a whole number (``downloaded=123``) or a decimal
(``seconds=1.25``) is a JSON number; anything else, quoted text included
(``error="5"``), is a string.

Free text goes in double quotes (``error="%s"``). In JSON, string
arguments have ``\\`` and ``"`` escaped before formatting, so a quote inside a peer's error
text cannot end the value early and fake more fields; ``msg`` always holds
the whole message.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

_FIELD = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')
_INT = re.compile(r"-?\d{1,18}")
_FLOAT = re.compile(r"-?\d{1,18}\.\d{1,18}")


class Polls:
    """What one round of a periodic check (a follower asking its peers) logged,
    so that the next round logs at INFO only what is new: INFO carries events,
    and a follower polling every second logs nothing while nothing changes.
    An outcome that goes away and comes back is new again."""

    def __init__(self) -> None:
        self._before: set[object] = set()
        self._now: set[object] = set()

    def level(self, outcome: tuple[object, ...]) -> int:
        """INFO if ``outcome`` (the line's event and fields) is not what the
        previous round saw, else DEBUG."""
        self._now.add(outcome)
        return logging.DEBUG if outcome in self._before else logging.INFO

    def next_round(self) -> None:
        self._before, self._now = self._now, set()


_POLLS: contextvars.ContextVar[Polls | None] = contextvars.ContextVar("p2pckpt_polls", default=None)


@contextlib.contextmanager
def polling(polls: Polls) -> Iterator[None]:
    """Within it (and in the trio tasks started within it), ``poll_level``
    consults ``polls``; the caller ends each round with ``next_round``."""
    token = _POLLS.set(polls)
    try:
        yield
    finally:
        _POLLS.reset(token)


def poll_level(*outcome: object) -> int:
    """The level for a routine outcome that a poll may find every time: INFO
    outside ``polling``, and inside it INFO only when it is new (``Polls``)."""
    polls = _POLLS.get()
    return logging.INFO if polls is None else polls.level(outcome)


def split_event(message: str) -> tuple[str, dict[str, Any]]:
    """``event`` (the words before the first key=value) and the fields."""
    first = _FIELD.search(message)
    if first is None:
        return message, {}
    fields: dict[str, Any] = {}
    for key, value in _FIELD.findall(message):
        if value.startswith('"'):  # free text stays text
            fields[key] = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif _INT.fullmatch(value):
            fields[key] = int(value)
        elif _FLOAT.fullmatch(value):
            fields[key] = float(value)
        else:
            fields[key] = value
    return message[: first.start()].strip().rstrip(":"), fields


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, fields = split_event(message)
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            "msg": message,
        }
        if fields:
            doc["fields"] = fields
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)  # json escapes line breaks


def _escape(arg: object) -> object:
    return arg.replace("\\", "\\\\").replace('"', '\\"') if isinstance(arg, str) else arg


class EscapeArgs(logging.Filter):
    """Escape quotes in string arguments (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_escape(a) for a in record.args)
        return True


def setup(level: int, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.addFilter(EscapeArgs())
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
