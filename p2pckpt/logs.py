"""Log lines: one event per line, as text or as JSON.

Log messages are written as ``event key=value key=value`` (for example
``pulled name=llama-ft version=5 downloaded=123``). The text format prints
them as they are, after the time, level and logger; the JSON format
(``--log-format json``, for journald, Loki or jq) also splits them into
``event`` and ``fields``. Either way a record is exactly one line: any line
break in a message (a peer-supplied string, a traceback) is escaped.

Free text goes in double quotes (``error="%s"``). In JSON, string
arguments have ``\\`` and ``"`` escaped before formatting, so a quote inside a peer's error
text cannot end the value early and fake more fields; ``msg`` always holds
the whole message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_FIELD = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')
_INT = re.compile(r"-?\d{1,18}")


def split_event(message: str) -> tuple[str, dict[str, Any]]:
    """``event`` (the words before the first key=value) and the fields."""
    first = _FIELD.search(message)
    if first is None:
        return message, {}
    fields: dict[str, Any] = {}
    for key, value in _FIELD.findall(message):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = int(value) if _INT.fullmatch(value) else value
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
