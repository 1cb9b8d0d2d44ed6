"""Correlation of one request across caller, gateway and AS: X-Request-Id and W3C traceparent.

Pure functions of header values, so that every listener (aiohttp's or a lean one) applies the same
rules: the request id is the gateway's own unless a trusted proxy sent a well-formed one; a
well-formed `traceparent` (W3C Trace Context level 1) goes to the AS unchanged, with its
`tracestate` when that is bounded and printable."""

from __future__ import annotations

import os
import re

REQUEST_ID_HEADER = "X-Request-Id"
# What a proxy's request id may look like to be kept: UUIDs, hex, base64url, Envoy/nginx ids.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=-]{1,128}")
# version 00, 32 hex trace-id, 16 hex parent-id, 2 hex flags (lower case, W3C Trace Context §3.2).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
MAX_TRACESTATE = 512


def request_id(given: str | None, from_trusted_proxy: bool) -> str:
    """A trusted proxy's well-formed id, else 128 random bits in hex (a caller's own is not kept:
    it would let anyone write chosen ids into the audit log and the AS's logs)."""
    if from_trusted_proxy and given and _REQUEST_ID.fullmatch(given):
        return given
    # As uuid4().hex but without building a UUID object (a profile hot spot).
    return os.urandom(16).hex()


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a well-formed version-00 traceparent with non-zero ids, else None."""
    if not value or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_PARENT:
        return None
    return value


def trace_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The trace context forwarded to the AS: nothing unless the traceparent is valid."""
    parent = valid_traceparent(traceparent)
    if parent is None:
        return {}
    out = {"traceparent": parent}
    if tracestate and len(tracestate) <= MAX_TRACESTATE and tracestate.isascii() and tracestate.isprintable():
        out["tracestate"] = tracestate
    return out


def trace_id(traceparent: str) -> str:
    """The trace-id of a valid traceparent (for the audit line)."""
    return traceparent[3:35]
