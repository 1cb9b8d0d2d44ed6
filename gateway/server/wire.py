"""HTTP/1.1 answers as bytes for the lean listener: rejections prebuilt per (status, reason, profile).

A rejection's status line, fixed headers and body are encoded once and kept; a request pays for the
Date line (formatted once per second), its own X-Request-Id line and one join."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

from gateway.errors import Rejection, rejection_parts

_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_second = -1
_date_line = b""


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, "Unknown").encode())


def date_line() -> bytes:
    """`Date: ...\\r\\n` (RFC 9110 §6.6.1), formatted once per second."""
    global _second, _date_line
    now = int(time.time())
    if now != _second:
        _date_line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        _second = now
    return _date_line


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


# (profile, row, retry-after seconds or None, close) -> (head without Date, body)
_PREBUILT: dict[tuple[object, ...], tuple[bytes, bytes]] = {}
_CLOSE = b"Connection: close\r\n"


def rejection_bytes(rejection: Rejection, profile: str, extra: bytes, *, close: bool) -> tuple[int, bytes]:
    """The whole answer to a rejected request: (status, bytes). `extra` are per-request header lines."""
    key = (profile, rejection.reason.row, rejection.retry_after, close)
    found = _PREBUILT.get(key)
    if found is None:
        status, headers, body = rejection_parts(rejection, profile)
        head = status_line(status) + b"".join(_field(k, v) for k, v in headers.items())
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        if close:
            head += _CLOSE
        if len(_PREBUILT) < 4096:  # retry_after values are few, but bound the cache anyway
            _PREBUILT[key] = (head, body)
        found = (head, body)
    head, body = found
    return int(head[9:12]), b"".join((head, date_line(), extra, b"\r\n", body))


def response_bytes(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, extra: bytes, *, close: bool
) -> bytes:
    """An answer with headers from elsewhere (the AS's, cleaned): Content-Length set here, no framing copied."""
    parts = [status_line(status)]
    parts.extend(_field(name, value) for name, value in headers)
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        parts.append(_CLOSE)
    parts += (date_line(), extra, b"\r\n", body)
    return b"".join(parts)
