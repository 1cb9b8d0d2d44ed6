"""One structured JSON line per token request; never the assertion, never a secret."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.redact import mask_userinfo

audit_log = logging.getLogger("bearer_gateway.audit")

# Caller-chosen fields are cut to these lengths (the JSON encoder escapes what they contain).
MAX_METHOD = 16
MAX_PATH = 256
MAX_USER_AGENT = 256


def _bounded_path(path: str) -> str:
    path = path[:MAX_PATH]
    # A path could quote a URL with a password in it (passthrough of other paths).
    return mask_userinfo(path) if "@" in path else path


# One encoder for every line: json.dumps with separators builds a new JSONEncoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_second = -1
_second_text = ""


def _timestamp() -> str:
    """RFC 3339 UTC to the second, formatted once per second rather than once per request."""
    global _second, _second_text
    now = int(time.time())
    if now != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        _second = now
    return _second_text


def write_audit(
    *,
    request_id: str,
    client_address: str,
    client: str,
    grant: str,
    outcome: str,
    reason: str,
    stage: str,
    latency: float,
    upstream_status: int | None,
    status: int | None = None,
    method: str = "-",
    path: str = "-",
    user_agent: str = "",
    trace_id: str | None = None,
) -> None:
    """Emit the audit record; every field is bounded or comes from configuration, not raw input."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    record: dict[str, Any] = {
        "time": _timestamp(),
        "request_id": request_id,
        "client_address": client_address,
        "client": client,
        "grant": grant,
        "outcome": outcome,
        "reason": reason,
        "stage": stage,
        "latency_ms": round(latency * 1000, 3),
        "upstream_status": upstream_status,
        "status": status,
        "method": method[:MAX_METHOD],
        "path": _bounded_path(path),
        "user_agent": user_agent[:MAX_USER_AGENT],
    }
    if trace_id is not None:
        record["trace_id"] = trace_id
    audit_log.info(_encode(record))
