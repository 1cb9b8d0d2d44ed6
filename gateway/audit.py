"""One structured JSON line per token request; never the assertion, never a secret."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

audit_log = logging.getLogger("bearer_gateway.audit")


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
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
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
    audit_log.info(json.dumps(record, separators=(",", ":")))
