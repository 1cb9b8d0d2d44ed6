"""Operator logs: one line per event, as JSON or text, userinfo masked; the audit line as it is.

`logging.format: json` writes `{"time", "level", "logger", "message", ...extra fields,
"exception"}` per line (a traceback is one field); `text` writes `time LEVEL logger message
key=value ...` with any newline escaped, so a traceback stays on its line too."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gateway.redact import mask_userinfo

AUDIT_LOGGER = "bearer_gateway.audit"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is printed.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _one_line(text: str) -> str:
    return mask_userinfo(text).replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class JSONFormatter(logging.Formatter):
    """One JSON object per line; a traceback is the `exception` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_userinfo(record.getMessage()),
        }
        for key, value in _extras(record).items():
            out[key] = mask_userinfo(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = mask_userinfo(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = mask_userinfo(record.exc_text)
        if record.stack_info:
            out["stack"] = mask_userinfo(record.stack_info)
        return _encode(out)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`; newlines escaped so that every event is one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_time(record), record.levelname, record.name, _one_line(record.getMessage())]
        for key, value in _extras(record).items():
            text = value if isinstance(value, str) else _encode(value)
            parts.append(f"{key}={_one_line(text)}")
        if record.exc_info:
            parts.append("exception=" + _one_line(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts.append("exception=" + _one_line(record.exc_text))
        return " ".join(parts)


class _AuditFormatter(logging.Formatter):
    """The audit record is already one JSON object: printed as it is."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def configure_logging(fmt: str, level: str) -> None:
    """Operator logs on stderr in `fmt` (json | text) at `level`; the audit log on stdout."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    set_level(level)
    # Nothing logged here uses the caller's file/line, thread or process fields; not collecting them
    # (the logging HOWTO's "Optimization" settings) takes ~10 µs off each audit line of a request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    audit = logging.getLogger(AUDIT_LOGGER)
    for old in list(audit.handlers):
        audit.removeHandler(old)
    audit_handler = logging.StreamHandler(sys.stdout)
    audit_handler.setFormatter(_AuditFormatter())
    audit.addHandler(audit_handler)
    audit.propagate = False


def set_level(level: str) -> None:
    """`logging.level` (debug, info, warning, error); also applied on reload. The audit line is
    INFO: it follows `logging.audit`, not the level."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
