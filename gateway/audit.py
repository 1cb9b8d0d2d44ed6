"""One structured JSON line per token request; never the assertion, never a secret."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

audit_log = logging.getLogger("bearer_gateway.audit")


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
    }
    audit_log.info(_encode(record))
