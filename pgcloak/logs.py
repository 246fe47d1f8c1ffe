"""Structured logging on top of stdlib `logging`, to stderr, as text or JSON lines.

Text: ``2026-11-21T23:30:00.123Z INFO pgcloak.proxy [c42] message key=value``
JSON: ``{"ts": ..., "level": ..., "logger": ..., "conn": 42, "msg": ..., "key": value}``

Extra fields come from the standard ``extra={...}`` argument. `setup_logging` is
idempotent so a SIGHUP reload can switch level and format in place. Callers must
never pass SQL text, parameter values or semantic names (the proxy's privacy promise).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TextFormatter", "conn_logger", "setup_logging"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record arrived via extra=.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "conn",
    "taskName",
}
_CORE = ("ts", "level", "logger", "conn", "msg")


def _timestamp(record: logging.LogRecord) -> str:
    secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{secs}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> list[tuple[str, object]]:
    return [(k, v) for k, v in record.__dict__.items() if k not in _RESERVED]


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """One human-readable line per record (tracebacks follow on further lines)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name]
        conn = getattr(record, "conn", None)
        if conn is not None:
            parts.append(f"[c{conn}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={_text_value(v)}" for k, v in _extras(record))
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """Exactly one JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "conn": getattr(record, "conn", None),
            "msg": record.getMessage(),
        }
        for key, value in _extras(record):
            obj["extra_" + key if key in _CORE else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd extra value must never make logging itself fail.
        return json.dumps(obj, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler[TextIO]):
    """Marker subclass so repeated setup finds and updates our handler, not a duplicate."""


def setup_logging(level: str, fmt: str) -> None:
    """Route all logging to stderr at `level` in `fmt` ('text' or 'json'); safe to re-call."""
    level = level.upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    # Our formats never show thread/process data; skipping it makes each record cheaper.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler(sys.stderr)
        root.addHandler(handler)
    else:
        handler.setStream(sys.stderr)  # follows a replaced sys.stderr (e.g. under pytest)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level)


class _ConnAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds conn=<id> to each record, merging (not replacing) the caller's extra=."""

    def __init__(self, logger: logging.Logger, conn_id: int) -> None:
        super().__init__(logger, {"conn": conn_id})
        self.conn_id = conn_id

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**extra, "conn": self.conn_id} if extra else self.extra
        return msg, kwargs


def conn_logger(
    conn_id: int, logger: logging.Logger | str = "pgcloak.proxy"
) -> logging.LoggerAdapter[logging.Logger]:
    """A logger tagging every record with connection id `conn_id` (shown as [c42]).

    Disabled levels cost one cached isEnabledFor() check: the adapter does nothing else.
    """
    base = logging.getLogger(logger) if isinstance(logger, str) else logger
    return _ConnAdapter(base, conn_id)
