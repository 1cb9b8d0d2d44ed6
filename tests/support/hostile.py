"""Helpers for the hardening tests: raw-socket servers and clients, forged assertions, audit lines."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.gateway import AUDIENCE, JWT_BEARER

SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(payload: dict[str, Any] | str, header: dict[str, Any] | None = None) -> str:
    """A compact JWS whose signature is garbage; `payload` may be raw JSON text."""
    head = json.dumps(header or {"alg": "ES256", "typ": "JWT"})
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64(head)}.{b64(body)}.{b64(b'x' * 64)}"


def good_claims(iss: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": iss, "sub": "tel:+34600000001", "aud": AUDIENCE, "iat": now, "exp": now + 120,
              "jti": f"jti-{time.monotonic_ns()}", "scope": SCOPE}
    claims.update(overrides)
    return claims


def token_body(assertion: str) -> bytes:
    return f"grant_type={JWT_BEARER}&assertion={assertion}".encode()


def audit_lines(caplog: Any) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "bearer_gateway.audit"]


def enable_audit(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="bearer_gateway.audit")


class RawServer:
    """A TCP server on a free loopback port whose connections run `handler` (a hostile peer)."""

    def __init__(self, handler: StreamHandler) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/token") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one HTTP/1.1 request with a Content-Length body: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


async def http_exchange(port: int, raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the gateway and read until it closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()


def status_codes(raw: bytes) -> list[int]:
    """The status codes of the HTTP/1.x responses in a byte stream (pipelined answers), framed by
    their Content-Length."""
    out = []
    while raw.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) and b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        out.append(int(head[9:12]))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = rest[length:]
    return out


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (head and Content-Length body) and return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head[9:12])


def post(path: str, body: bytes, extra: str = "", *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n{connection}{extra}\r\n"
    ).encode() + body
