"""The lean token listener: HTTP/1.1 on an asyncio Protocol over httptools (llhttp), no framework.

Serves what the aiohttp main listener serves (the token route, other paths by policy, the gateway's
JWKS) with the same limits, at a per-request cost close to the bare parser's. What it enforces, all
from `limits` (README: stage connection):

- llhttp in strict mode: CL + TE, duplicate Content-Length, obs-fold, bad header tokens and value
  characters, bare LF, invalid chunk framing are parse errors (400, connection closed);
- beyond llhttp: HTTP/1.0 or 1.1 only, exactly one Host (HTTP/1.1), Transfer-Encoding only `chunked`
  (one line), request target and each header ≤ `max_field_bytes` (414/431), ≤ `max_headers` fields and
  ≤ `max_header_bytes` in total (431), trailers counted in the same budget;
- deadlines: a request head within `keepalive_timeout` of the connection going idle, the body within
  `read_timeout` of the head (408); bodies, chunked or not, capped at `max_body_bytes` (413);
- `Expect: 100-continue` answered once the head passed the route checks (a refused head gets its final
  answer and the connection closes); any other expectation 417;
- pipelining: answers in order, one request handled at a time per connection, at most `_PIPELINED`
  parsed requests waiting (reading pauses beyond, and while the peer does not read its answers);
- `max_concurrent_requests` across connections (503 `overloaded`); TLS by the loop's SSL transport;
  `drain()` for SIGTERM: stop accepting, finish what is in flight, close idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import httptools
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import Reason, Rejection
from gateway.server import token
from gateway.server.correlation import REQUEST_ID_HEADER
from gateway.server.incoming import Incoming
from gateway.server.wire import date_line, rejection_bytes, response_bytes, status_line
from gateway.upstream.answer import Passed

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("bearer_gateway.http")

JWKS_PATH = "/.well-known/jwks.json"
# Parsed requests that may wait behind the one being handled; reading pauses beyond.
_PIPELINED = 32
# Bytes fed to the parser at a time, so that a burst of tiny pipelined requests stays bounded.
_SLICE = 8192
# A request target that needs no decoding: the path is the raw target (the usual case).
_PLAIN_TARGET = re.compile(r"/[A-Za-z0-9/_~-]*")


def _plain(status: int, error: str, description: str) -> tuple[bytes, bytes]:
    body = b'{"error":"%s","error_description":"%s"}' % (error.encode(), description.encode())
    return (
        status_line(status)
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body)
        + b"Cache-Control: no-store\r\n"
    ), body


# Connection-level refusals (never reach the token route, as with aiohttp's parser): (head, body).
BAD_REQUEST = _plain(400, "invalid_request", "malformed HTTP request")
URI_TOO_LONG = _plain(414, "invalid_request", "request target too long")
EXPECTATION_FAILED = _plain(417, "invalid_request", "unsupported expectation")
VERSION_NOT_SUPPORTED = _plain(505, "invalid_request", "HTTP version not supported")
HEADERS_TOO_LARGE = Rejection(Reason.HEADERS_TOO_LARGE, "connection")
OVERLOADED = Rejection(Reason.OVERLOADED, "connection", retry_after=1.0)


class _Refused(Exception):
    """Raised from a parser callback: the request is refused with `answer` and the connection closes."""

    def __init__(self, answer: tuple[bytes, bytes] | Rejection) -> None:
        self.answer = answer


class Message:
    """One request as it is parsed."""

    __slots__ = (
        "body",
        "close",
        "declared",
        "expect",
        "field",
        "header_bytes",
        "headers",
        "http10",
        "method",
        "outcome",
        "path",
        "query",
        "runtime",
        "size",
        "target",
        "verdict",
    )

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.target = b""
        self.method = "GET"
        self.path = ""
        self.query = ""
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.size = 0
        self.declared: int | None = None
        self.expect = False
        self.close = False
        self.http10 = False
        self.outcome: token.Outcome | None = None
        # Decided before the body is complete: a route refusal (answered when the body is in), or
        # an early answer (bytes) that closes the connection.
        self.verdict: Rejection | None = None
        self.field = 0


class Counts(Protocol):
    active: int
    cancelled: int


class Listener:
    """The lean main listener of one gateway process."""

    def __init__(self, runtime: Callable[[], Runtime], guard: Counts, *, tls: ssl.SSLContext | None) -> None:
        self.runtime = runtime
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self.connections: set[Connection] = set()
        # Requests being handled (max_concurrent_requests) and those cancelled: the Gateway's counts.
        self.guard = guard
        self.server: asyncio.Server | None = None
        self.draining = False

    async def start(self, host: str, port: int, *, reuse_port: bool) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self),
            host,
            port,
            ssl=self.tls,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def drain(self, timeout: float) -> None:
        """Stop accepting; let requests in progress get their answers (connections close after them);
        close idle connections at once; after `timeout`, close what is left."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        await asyncio.sleep(0)


def _id_line(outcome: token.Outcome) -> bytes:
    return b"X-Request-Id: " + outcome.request_id.encode("ascii", "replace") + b"\r\n"


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.msg: Message | None = None  # being parsed
        self.queue: deque[Message] = deque()  # complete, waiting their turn
        self.busy = False  # a request is being handled (or its answer is waiting for the writer)
        self.task: asyncio.Task[None] | None = None
        self.unparsed = b""  # read while the queue was full
        self.stop_reading = False  # nothing after this point is parsed (a close is coming)
        self.final: bytes | None = None  # answer written after the queue, then the connection closes
        self.paused_reading = False
        self.paused_writing = False
        self.eof = False
        self.closed = False
        self.deadline: float | None = None
        self.deadline_body = False
        self.timer: asyncio.TimerHandle | None = None

    # Transport events -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        self.listener.connections.add(self)
        if self.listener.draining:
            self.abort()
            return
        self._head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the caller went away: accounted as client_disconnected
        self._drop_pending()

    def _drop_pending(self) -> None:
        """Forget what will not be answered; a request begun early (Expect, oversize) is still accounted."""
        pending = [*self.queue, self.msg] if self.msg is not None else list(self.queue)
        self.queue.clear()
        self.msg = None
        for msg in pending:
            if msg.outcome is not None:
                token.cancelled(msg.outcome)
                token.account(msg.runtime, msg.outcome)
                msg.outcome = None

    def eof_received(self) -> bool:
        # A half-closed peer still gets the answers to what it sent; the connection closes after them.
        self.eof = True
        self.stop_reading = True
        if self.task is not None:
            # As aiohttp (handler_cancellation): a caller gone while its request is handled is a
            # disconnect; the request is cancelled and accounted as client_disconnected.
            self.abort()
            return False
        if not self.busy:
            self._next()
        return self.listener.tls is None  # an SSL transport cannot stay half-open

    def pause_writing(self) -> None:
        # The peer does not read its answers: nothing more is handled for it, and unless it reads
        # within keepalive_timeout the connection is closed (no slow-reader hold on memory).
        self.paused_writing = True
        if not self.deadline_body or self.deadline is None:
            self._head_deadline()

    def resume_writing(self) -> None:
        self.paused_writing = False
        if not self.busy:
            self._next()

    def data_received(self, data: bytes) -> None:
        if self.stop_reading or self.closed:
            return
        if self.unparsed:
            self.unparsed += data
            self._pause()
            return
        self._feed(data)
        if not self.busy:
            self._next()

    def _feed(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        while pos < size and not self.stop_reading:
            if len(self.queue) >= _PIPELINED:
                self.unparsed = data[pos:]
                self._pause()
                return
            chunk = data[pos : pos + _SLICE] if size > _SLICE else data
            pos += len(chunk)
            try:
                self.parser.feed_data(chunk)
            except _Refused as refused:
                self._refuse(refused.answer)
            except httptools.HttpParserUpgrade:
                # No protocol upgrades (and no CONNECT tunnels): what came before is answered, the rest ignored.
                self.stop_reading = True
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__ or exc.__cause__
                if isinstance(cause, _Refused):
                    self._refuse(cause.answer)
                else:  # pragma: no cover - a bug in a callback
                    log.exception("lean listener: parser callback failed")
                    self._refuse(BAD_REQUEST)
            except httptools.HttpParserError as exc:
                log.debug("malformed request from %s: %s", self.peer, exc)
                self._refuse(BAD_REQUEST)

    def _pause(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused_reading and self.transport is not None and not self.closed:
            self.paused_reading = False
            self.transport.resume_reading()

    # Deadlines: one lazy timer per connection; moving a deadline costs an assignment ---------------

    def _head_deadline(self) -> None:
        runtime = self.listener.runtime()
        self._set_deadline(runtime.config.limits.keepalive_timeout, body=False)

    def _set_deadline(self, seconds: float, *, body: bool) -> None:
        deadline = self.deadline = self.loop.time() + seconds
        self.deadline_body = body
        if self.timer is not None:
            if self.timer.when() <= deadline:
                return  # fires first, finds the later deadline and waits again
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.deadline is None or self.closed:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        msg = self.msg
        if self.deadline_body:
            self.deadline = None
            if msg is not None and msg.field and not self.stop_reading:
                # The head came, the body did not: 408, an audited request (stage connection).
                self.msg = None
                self._refuse_message(msg, Rejection(Reason.BODY_READ_TIMEOUT, "connection"))
        elif (not self.busy and not self.queue) or self.paused_writing:
            # Idle past keepalive_timeout, a request head not finished within it (a busy connection
            # gets a new head deadline when its answer is out), or answers not read within it.
            self.deadline = None
            self.abort()

    # Parser callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.msg = Message(self.listener.runtime())

    def on_url(self, url: bytes) -> None:
        msg = self.msg
        assert msg is not None
        msg.target += url
        if len(msg.target) > msg.runtime.config.limits.max_field_bytes:
            raise _Refused(URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self.msg
        assert msg is not None
        limits = msg.runtime.config.limits
        size = len(name) + len(value)
        msg.header_bytes += size + 4
        if (
            size > limits.max_field_bytes
            or len(msg.headers) >= limits.max_headers
            or msg.header_bytes > limits.max_header_bytes
        ):
            raise _Refused(HEADERS_TOO_LARGE)
        if msg.field:  # a trailer of a chunked body: counted above, otherwise ignored
            return
        msg.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        msg = self.msg
        assert msg is not None
        msg.field = 1
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(VERSION_NOT_SUPPORTED)
        msg.http10 = version == "1.0"
        msg.method = self.parser.get_method().decode("ascii", "replace")
        self._target(msg)
        msg.close = not self.parser.should_keep_alive() or msg.http10
        hosts = 0
        transfer = 0
        for name, value in msg.headers:
            lower = name.lower()
            if lower == "host":
                hosts += 1
            elif lower == "content-length":
                msg.declared = int(value)  # llhttp accepted it: digits only, and only one
            elif lower == "transfer-encoding":
                transfer += 1
                if value.strip().lower() != "chunked":
                    raise _Refused(BAD_REQUEST)
            elif lower == "expect":
                if value.strip().lower() != "100-continue":
                    raise _Refused(EXPECTATION_FAILED)
                msg.expect = not msg.http10
        # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing.
        if hosts > 1 or (hosts == 0 and not msg.http10) or transfer > 1 or (transfer and msg.http10):
            raise _Refused(BAD_REQUEST)
        limits = msg.runtime.config.limits
        if msg.expect or (msg.declared is not None and msg.declared > limits.max_body_bytes):
            # Decide from the head now: a refusal goes out without waiting for (or inviting) the body.
            verdict = self._route(msg)
            if verdict is not None:
                raise _Refused(verdict)
            if msg.expect and not self.busy and not self.queue and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                msg.expect = False
        self._set_deadline(limits.read_timeout, body=True)

    def on_body(self, body: bytes) -> None:
        msg = self.msg
        assert msg is not None
        msg.size += len(body)
        if msg.size > msg.runtime.config.limits.max_body_bytes:
            raise _Refused(self._route(msg) or Rejection(Reason.BODY_TOO_LARGE, "size"))
        msg.body.append(body)

    def on_message_complete(self) -> None:
        msg = self.msg
        assert msg is not None
        self.msg = None
        self.deadline = None
        self.queue.append(msg)
        if msg.close:
            self.stop_reading = True

    # Refusals ---------------------------------------------------------------------------------------

    @staticmethod
    def _target(msg: Message) -> None:
        """Path (percent-decoded, as aiohttp's request.path) and query string of the request target."""
        target = msg.target.decode("utf-8", "surrogateescape")
        if _PLAIN_TARGET.fullmatch(target):
            msg.path = target
            return
        try:
            if target.startswith("/"):
                raw_path, _, raw_query = target.partition("?")
                url = URL.build(path=raw_path, query_string=raw_query, encoded=True)
            else:  # absolute-form (RFC 9112 §3.2.2)
                url = URL(target, encoded=True)
                if not url.absolute:
                    raise ValueError(target)
            msg.path, msg.query = url.path, url.query_string
        except ValueError:
            raise _Refused(BAD_REQUEST) from None

    def _incoming(self, msg: Message) -> Incoming:
        return Incoming(msg.method, msg.path, msg.query, CIMultiDict(msg.headers), self.peer, self.listener.scheme)

    def _route(self, msg: Message) -> Rejection | None:
        """Begin the request and run the route stage early (Expect, a declared or read oversize body)."""
        if msg.outcome is not None:
            return msg.verdict
        incoming = self._incoming(msg)
        msg.outcome = token.begin(incoming, msg.runtime)
        msg.verdict = token.route(incoming, msg.runtime, msg.outcome, msg.declared)
        return msg.verdict

    def _refuse(self, answer: tuple[bytes, bytes] | Rejection) -> None:
        """The message being parsed is refused; nothing after it is read; the queue is answered first."""
        msg = self.msg
        self.msg = None
        self.stop_reading = True
        routed = isinstance(answer, Rejection) and answer is not HEADERS_TOO_LARGE
        if msg is not None and (msg.outcome is not None or routed):
            # A token-route request (begun early, or refused by its route or size): audited.
            rejection = answer if isinstance(answer, Rejection) else Rejection(Reason.FORM_MALFORMED, "size")
            self._refuse_message(msg, rejection)
            return
        if isinstance(answer, Rejection):
            _, data = rejection_bytes(answer, self.listener.runtime().config.profile.errors, b"", close=True)
        else:
            head, body = answer
            data = b"".join((head, date_line(), b"\r\n", body))
        self.final = data
        if not self.busy:
            self._next()

    def _refuse_message(self, msg: Message, rejection: Rejection) -> None:
        """A token-route request refused before its body was complete: audited, then the connection closes."""
        self.stop_reading = True
        runtime = msg.runtime
        if msg.outcome is None:
            self._route(msg)
        outcome = msg.outcome
        assert outcome is not None
        token.settle(rejection, outcome)
        outcome.status, data = rejection_bytes(rejection, runtime.config.profile.errors, _id_line(outcome), close=True)
        token.account(runtime, outcome)
        self.final = data
        if not self.busy:
            self._next()

    # Handling ---------------------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer queued requests in order while nothing is in progress."""
        while not self.busy and not self.closed:
            if self.paused_writing:
                return
            if self.queue:
                self._start(self.queue.popleft())
                continue
            if self.final is not None:
                assert self.transport is not None
                self.transport.write(self.final)
                self.final = None
                self.abort(flush=True)
                return
            if self.eof or self.stop_reading:
                if self.msg is None or self.eof:
                    self.abort(flush=True)
                return
            if self.unparsed:
                data, self.unparsed = self.unparsed, b""
                self._feed(data)
                if self.queue or self.final is not None:
                    continue
            self._resume()
            msg = self.msg
            if msg is not None and msg.expect and self.transport is not None:
                msg.expect = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif msg is None or not msg.field:
                self._head_deadline()
            return

    def _start(self, msg: Message) -> None:
        runtime = msg.runtime
        limits = runtime.config.limits
        listener = self.listener
        if msg.outcome is None and msg.path == JWKS_PATH and msg.method in ("GET", "HEAD"):
            self._write(self._jwks(runtime, head=msg.method == "HEAD"), msg.close)
            return
        if listener.guard.active >= limits.max_concurrent_requests:
            outcome = msg.outcome
            extra = _id_line(outcome) if outcome is not None else b""
            status, data = rejection_bytes(OVERLOADED, runtime.config.profile.errors, extra, close=msg.close)
            if outcome is not None:  # begun early: give it its accounting
                token.settle(OVERLOADED, outcome)
                outcome.status = status
                token.account(runtime, outcome)
            self._write(data, msg.close)
            return
        verdict = self._route(msg)
        outcome = msg.outcome
        assert outcome is not None
        if verdict is not None:
            self._finish(msg, verdict)
            return
        listener.guard.active += 1
        self.busy = True
        self.task = self.loop.create_task(self._run(msg, b"".join(msg.body)))

    async def _run(self, msg: Message, body: bytes) -> None:
        outcome = msg.outcome
        assert outcome is not None
        runtime = msg.runtime
        try:
            result = await token.handle(outcome.incoming, body, runtime, outcome)  # built once, by _route
        except asyncio.CancelledError:
            self.listener.guard.active -= 1
            self.listener.guard.cancelled += 1
            token.cancelled(outcome)
            token.account(runtime, outcome)
            raise
        except Exception:
            result = token.internal_error()
        self.listener.guard.active -= 1
        self.busy = False
        self.task = None
        self._finish(msg, result)
        self._next()

    def _finish(self, msg: Message, result: token.Result) -> None:
        outcome = msg.outcome
        assert outcome is not None
        runtime = msg.runtime
        token.settle(result, outcome)
        close = msg.close or self.listener.draining
        # Every answer names its request id, the one in the audit line and sent to the AS.
        extra = _id_line(outcome)
        if isinstance(result, Passed):
            headers = result.headers
            headers.popall(REQUEST_ID_HEADER, None)
            outcome.status = result.status
            data = response_bytes(result.status, headers.items(), result.body, extra, close=close)
        else:
            close = close or result.reason in token.CLOSING
            outcome.status, data = rejection_bytes(result, runtime.config.profile.errors, extra, close=close)
        token.account(runtime, outcome)
        self._write(data, close)

    def _write(self, data: bytes, close: bool) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.stop_reading = True
            self._drop_pending()
            self.final = None
            self.abort(flush=True)

    @staticmethod
    def _jwks(runtime: Runtime, *, head: bool) -> bytes:
        body = runtime.jwks_document
        max_age = int(runtime.config.gateway.jwks_max_age)
        return response_bytes(
            200,
            (("Content-Type", "application/json"), ("Cache-Control", f"public, max-age={max_age}")),
            b"" if head else body,
            b"",
            close=False,
        )

    # Closing ----------------------------------------------------------------------------------------

    def drain(self) -> None:
        """SIGTERM: an idle connection closes now; a busy one after its current answer."""
        self.stop_reading = True
        self._drop_pending()
        if not self.busy:
            self.abort(flush=True)

    def abort(self, *, flush: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        self.closed = True
        if flush:
            self.transport.close()  # what is written goes out first
        else:
            self.transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()
