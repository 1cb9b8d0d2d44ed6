"""A keep-alive HTTP/1.1 connection pool to the token URL: asyncio Protocol + httptools (llhttp).

What the jwt-bearer path needs from an HTTP client and no more: one origin, POST, a Content-Length
body, an answer read to its end with a size cap. Connections are reused while the AS keeps them
alive; TLS (the upstream's verification settings and a client certificate, tls_client_auth) comes
from the SSLContext the UpstreamClient builds. A request is never retried once written: a
connection that fails after the write is an error for that request, not a second attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterable

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


class Unreachable(Exception):
    """No connection, or the connection failed before any answer byte: nothing came back."""


class BadAnswer(Exception):
    """The answer was malformed, truncated or over the size cap."""


class _Exchange(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] | None = None
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.answered = False  # any byte of the current answer arrived
        self.framed = False  # the answer has a Content-Length or is chunked (else: until close)
        self.complete = False
        self.keep_alive = False
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool.forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.answered and not self.framed and self.parser.get_status_code() and not self.complete:
            self._done()  # an answer delimited by the close (RFC 9112 §6.3 item 8)
        elif self.answered:
            waiter.set_exception(BadAnswer("connection closed inside the answer"))
        else:
            waiter.set_exception(Unreachable("connection closed before an answer"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except BadAnswer as exc:
            self._fail(exc)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadAnswer) else BadAnswer(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(str(exc)))

    def eof_received(self) -> bool:
        return False

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("latin-1")
        lower = text.lower()
        if lower in ("content-length", "transfer-encoding"):
            self.framed = True
        self.headers.append((text, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            raise BadAnswer("interim answer")  # never asked for one (no Expect, no Upgrade)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.pool.max_response_bytes:
            raise BadAnswer("answer larger than max_response_bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (the parser resets for the next answer)
        self._done()

    def _done(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), CIMultiDict(self.headers), b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def send(self, data: bytes) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        assert self.transport is not None
        self.headers, self.body, self.size = [], [], 0
        self.answered = self.framed = self.complete = self.keep_alive = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def reusable(self) -> bool:
        transport = self.transport
        return self.alive and self.complete and self.keep_alive and transport is not None and not transport.is_closing()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer within timeouts.total"))


class Pool:
    """Keep-alive connections to one origin, at most `max_connections` open; waiters queue for one."""

    def __init__(
        self,
        url: URL,
        *,
        tls: ssl.SSLContext | None,
        max_connections: int,
        connect_timeout: float,
        max_response_bytes: int,
    ) -> None:
        self.host = url.host or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = tls
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.target = url.raw_path_qs.encode("ascii")
        host = url.raw_host or self.host
        default = (url.scheme == "https" and self.port == 443) or (url.scheme == "http" and self.port == 80)
        self.host_header = (host if default else f"{host}:{self.port}").encode("ascii")
        self.idle: list[_Exchange] = []
        self.open: set[_Exchange] = set()
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def forget(self, conn: _Exchange) -> None:
        self.open.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self) -> _Exchange:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.alive and conn.transport is not None and not conn.transport.is_closing():
                    return conn
                self.open.discard(conn)
            if len(self.open) < self.max_connections:
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            await waiter

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        conn = _Exchange(self)
        self.open.add(conn)  # counted while connecting
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except TimeoutError:
            self.forget(conn)
            raise Unreachable("no connection within timeouts.connect") from None
        except (OSError, ssl.SSLError) as exc:
            self.forget(conn)
            raise Unreachable(str(exc)) from None
        except BaseException:
            self.forget(conn)
            conn.close()
            raise
        return conn

    def _release(self, conn: _Exchange) -> None:
        if conn.reusable() and not self.closed:
            self.idle.append(conn)
            self._wake()
        else:
            conn.close()
            self.forget(conn)

    async def post(
        self, body: bytes, headers: Iterable[tuple[str, str]], timeout: float
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """POST `body` to the URL; the whole answer within `timeout` seconds (connecting included), or
        Unreachable / BadAnswer / TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = None
        while self.idle:  # the usual case: a kept-alive connection, no waiting
            candidate = self.idle.pop()
            if candidate.alive and candidate.transport is not None and not candidate.transport.is_closing():
                conn = candidate
                break
            self.open.discard(candidate)
        if conn is None:
            async with asyncio.timeout_at(deadline):
                conn = await self._acquire()
        head = [b"POST ", self.target, b" HTTP/1.1\r\nHost: ", self.host_header, b"\r\n"]
        for name, value in headers:
            head.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head.append(body)
        done = False
        waiter = conn.send(b"".join(head))
        # One timer for the exchange (cheaper than a timeout context per request).
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            status, answer_headers, payload = await waiter
            done = True
        finally:
            timer.cancel()
            if done:
                self._release(conn)
            else:  # failed, timed out or cancelled mid-exchange: the connection is out of step
                conn.close()
                self.forget(conn)
        return status, CIMultiDictProxy(answer_headers), payload

    async def close(self) -> None:
        self.closed = True
        for conn in list(self.open):
            conn.close()
        self.open.clear()
        self.idle.clear()
        await asyncio.sleep(0)
