"""One structured JSON line per token request; never the assertion, never a secret.

Where the lines go: through the `bearer_gateway.audit` logger (one record per line, as tests and
embedders see them), or, in a `bearer-gateway run` process, batched straight to stdout
(`batch_output`): lines are collected and written together when `MAX_BATCH_LINES` are waiting or
`FLUSH_INTERVAL` after the first of them, and on shutdown (`flush_output`, also at exit), so a
request pays for an append, not for a logging record, a lock and a write system call.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import time
from collections.abc import Callable
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


# A batch is written in chunks of whole lines of at most PIPE_BUF bytes: a pipe takes such a write
# in one piece, so the lines of several workers sharing stdout never interleave inside a line.
PIPE_BUF = 4096
MAX_BATCH_LINES = 256
FLUSH_INTERVAL = 0.05  # seconds: the longest a line waits in a batch


class BatchedOutput:
    """Audit lines collected and written to a file descriptor in batches (one process, one loop)."""

    def __init__(self, fd: int, *, max_lines: int = MAX_BATCH_LINES, interval: float = FLUSH_INTERVAL) -> None:
        self.fd = fd
        self.max_lines = max_lines
        self.interval = interval
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (start-up, shutdown): write now
                self.flush()
                return
            self._timer = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "backslashreplace") + b"\n"
            if chunk and size + len(data) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # stdout closed: nothing to write to (as a logging handler would drop it)
            view = view[written:]


def _to_logger(line: str) -> None:
    audit_log.info(line)


_output: Callable[[str], None] = _to_logger
_batched: BatchedOutput | None = None


def batch_output(fd: int) -> BatchedOutput:
    """Send audit lines to `fd` in batches from now on (a `bearer-gateway run` process: stdout)."""
    global _output, _batched
    flush_output()
    _batched = BatchedOutput(fd)
    _output = _batched.write
    return _batched


def flush_output() -> None:
    """Write what is waiting (shutdown, and at exit)."""
    if _batched is not None:
        _batched.flush()


atexit.register(flush_output)


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
    _output(_encode(record))
