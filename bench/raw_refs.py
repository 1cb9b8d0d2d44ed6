"""The raw floor: the same two references on asyncio Protocol + httptools (llhttp), no framework.

`raw-reject` answers every complete request with a prebuilt 400; `raw-verify-proxy` parses the form,
verifies the assertion with the same pre-parsed key as `ref-verify-proxy` and forwards the body over a
keep-alive HTTP/1.1 connection pool to the static AS. What a verifying proxy costs in Python when
nothing but the parser, the signature and the socket work is paid: the physical floor of this stack.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import httptools
from cryptography.exceptions import InvalidSignature


def _response(status: str, body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


class _Conn(asyncio.Protocol):
    """One client connection: parse, answer in order (reading paused while a request is in flight)."""

    def __init__(self, app: RawApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(self.app.bad)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        answer = self.app.handle(b"".join(self.body))
        if isinstance(answer, bytes):
            self._send(answer)
        else:
            self.transport.pause_reading()
            task = asyncio.ensure_future(answer)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[bytes]) -> None:
        assert self.transport is not None
        self._send(task.result() if not task.exception() else self.app.bad)
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _send(self, answer: bytes) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        if not self.parser.should_keep_alive():
            self.transport.close()


class RawApp:
    bad = _response("400 Bad Request", b'{"error":"invalid_request"}', close=True)

    def handle(self, body: bytes) -> bytes | asyncio.Future[bytes]:
        raise NotImplementedError


class RawReject(RawApp):
    answer = _response("400 Bad Request", b'{"error":"invalid_request","error_description":"malformed token request"}')

    def handle(self, body: bytes) -> bytes:
        return self.answer


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the AS; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        assert self.waiter is not None
        self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


class RawVerifyProxy(RawApp):
    unauthorized = _response(
        "401 Unauthorized", b'{"error":"invalid_client","error_description":"client authentication failed"}'
    )

    def __init__(self, verify: Callable[[bytes, bytes], None], b64url: Callable[[str], bytes], upstream: str) -> None:
        self.verify = verify
        self.b64url = b64url
        url = urlsplit(upstream)
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self.head = (
            f"POST {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        ).encode()
        self.idle: list[_Upstream] = []

    def handle(self, body: bytes) -> bytes | asyncio.Future[bytes]:
        assertion = dict(parse_qsl(body.decode("ascii", "replace"))).get("assertion")
        if not assertion or assertion.count(".") != 2:
            return RawReject.answer
        head, _, signature = assertion.rpartition(".")
        try:
            self.verify(head.encode("ascii"), self.b64url(signature))
        except (InvalidSignature, ValueError, binascii.Error):
            return self.unauthorized
        return asyncio.ensure_future(self.forward(body))

    async def forward(self, body: bytes) -> bytes:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(_Upstream, *self.address)
        status, payload = await conn.send(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        if conn.reusable:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return _response(f"{status} OK" if status == 200 else f"{status} Error", payload)


def serve(app: RawApp, port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Conn(app), "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())
