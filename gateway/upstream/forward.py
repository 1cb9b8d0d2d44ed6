"""The forwarding core: one pooled session to the AS, timeouts, no retry once a request is sent."""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.model import Upstream
from gateway.errors import Reason, Rejection
from gateway.metrics import metrics
from gateway.upstream.circuit import CircuitBreaker
from gateway.upstream.pool import BadAnswer, Pool, Unreachable

# RFC 9110 §7.6.1: hop-by-hop fields are meaningful for one connection only and never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Fields the gateway sets itself on the way out or back.
_NOT_COPIED_UP = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "expect",
}
_NOT_COPIED_DOWN = HOP_BY_HOP | {"content-length", "date", "server"}


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]


def end_to_end_headers(headers: Mapping[str, str] | CIMultiDictProxy[str], *, up: bool) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones, including those named in `Connection` (RFC 9110 §7.6.1)."""
    skip = set(_NOT_COPIED_UP if up else _NOT_COPIED_DOWN)
    for name in headers.get("Connection", "").split(","):
        skip.add(name.strip().lower())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in skip:
            out.add(name, value)
    return out


def ssl_context(settings: Upstream, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext | bool:
    """TLS settings for the AS connection; a client certificate makes it a per-client context."""
    if not settings.tls.verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cafile = str(settings.tls.ca_file) if settings.tls.ca_file else None
        context = ssl.create_default_context(cafile=cafile)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class InFlight:
    """Stage upstream_guard state shared by every session to the AS: requests not answered yet."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def new_breaker(settings: Upstream) -> CircuitBreaker | None:
    cb = settings.circuit_breaker
    return CircuitBreaker(cb.failures, cb.open_for) if cb is not None else None


class UpstreamClient:
    """Sends requests to the AS through a pooled session; counts in-flight requests and sheds beyond the cap.

    Sessions for client certificates (tls_client_auth) pass the main client's `in_flight` and breaker,
    so that `max_in_flight` bounds what reaches the AS, not what each session sends. Passthrough
    grants share the count but have a breaker of their own: unauthenticated traffic that fails at
    the AS must not open the circuit that verified jwt-bearer requests go through.
    """

    def __init__(
        self,
        settings: Upstream,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        in_flight: InFlight | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = settings
        self.token_url = URL(str(settings.token_url))
        self.origin = self.token_url.origin()
        self._cert = (cert_file, key_file)
        self._session: aiohttp.ClientSession | None = None
        self._pool: Pool | None = None
        # A client of its own (in_flight not given) gets its own breaker; a session sharing another's
        # in-flight count shares the breaker it is given (None: no breaker).
        self.in_flight = in_flight if in_flight is not None else InFlight()
        self.breaker = breaker if in_flight is not None else new_breaker(settings)

    async def start(self) -> None:
        ssl_arg: ssl.SSLContext | bool = True
        if self.token_url.scheme == "https":
            ssl_arg = ssl_context(self.settings, *self._cert)
        # The jwt-bearer POSTs to the token URL: a keep-alive pool of our own (upstream/pool.py).
        self._pool = Pool(
            self.token_url,
            tls=ssl_arg if isinstance(ssl_arg, ssl.SSLContext) else None,
            max_connections=self.settings.max_connections,
            connect_timeout=self.settings.timeouts.connect,
            max_response_bytes=self.settings.max_response_bytes,
        )
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            ssl=ssl_arg,
            enable_cleanup_closed=True,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.settings.timeouts.total,
            sock_connect=self.settings.timeouts.connect,
            connect=self.settings.timeouts.total,
        )
        # auto_decompress off: passthrough answers go back byte for byte, encoding and all.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient.start() not awaited"
        return self._session

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._session is not None:
            await self._session.close()

    async def send(
        self,
        method: str,
        url: URL,
        body: bytes,
        headers: CIMultiDict[str],
        *,
        pooled: bool = False,
    ) -> UpstreamAnswer | Rejection:
        """Send once; a request that reached the AS is never retried (it may have been acted on).
        `pooled`: a POST to the token URL through the keep-alive pool (the jwt-bearer path); else
        aiohttp's client (passthrough: any method and path, the caller's headers as they came)."""
        in_flight = self.in_flight
        if in_flight.count >= self.settings.max_in_flight:
            metrics().upstream_errors.labels("upstream_shed").inc()
            return Rejection(Reason.UPSTREAM_SHED, "upstream_guard", self.settings.retry_after)
        breaker = self.breaker
        if breaker is None:
            return await self._send(method, url, body, headers, pooled)
        wait = breaker.acquire()
        if wait > 0:
            metrics().upstream_errors.labels("upstream_circuit_open").inc()
            return Rejection(Reason.UPSTREAM_CIRCUIT_OPEN, "upstream_guard", wait)
        probe = breaker.probing_now()
        recorded = False
        try:
            answer = await self._send(method, url, body, headers, pooled)
            breaker.record(isinstance(answer, UpstreamAnswer) and answer.status < 500)
            recorded = True
        finally:
            # Cancelled (the caller disconnected) or an unexpected error: no verdict on the AS, but
            # the half-open probe slot must be given back or the circuit never closes again.
            if probe and not recorded:
                breaker.release()
        return answer

    def guard(self) -> Rejection | None:
        """The local upstream guards without sending: would `send` refuse right now? (takes no probe slot)"""
        if self.in_flight.count >= self.settings.max_in_flight:
            return Rejection(Reason.UPSTREAM_SHED, "upstream_guard", self.settings.retry_after)
        wait = self.breaker.wait() if self.breaker is not None else 0.0
        if wait > 0:
            return Rejection(Reason.UPSTREAM_CIRCUIT_OPEN, "upstream_guard", wait)
        return None

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """The answer body, at most `max_response_bytes` (ValueError beyond: a bad response)."""
        cap = self.settings.max_response_bytes
        length = response.content_length
        if length is not None:
            if length > cap:
                raise ValueError("answer larger than max_response_bytes")
            return await response.read()  # exactly Content-Length bytes
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > cap:
                raise ValueError("answer larger than max_response_bytes")
        return bytes(body)

    async def _send(
        self,
        method: str,
        url: URL,
        body: bytes,
        headers: CIMultiDict[str],
        pooled: bool,
    ) -> UpstreamAnswer | Rejection:
        in_flight = self.in_flight
        in_flight.count += 1
        m = metrics()
        gauge = m.upstream_in_flight
        m.inc(gauge)
        started = time.perf_counter()
        try:
            if pooled and self._pool is not None:
                status, answer_headers, payload = await self._pool.post(
                    body, headers.items(), self.settings.timeouts.total
                )
                answer = UpstreamAnswer(status, payload, answer_headers)
            else:
                answer = await self._aiohttp(method, url, body, headers)
        except (aiohttp.ConnectionTimeoutError, Unreachable):
            # No connection within timeouts.connect, or none at all: the AS is unreachable, nothing
            # came back (a request written to a connection that then failed is not sent again).
            metrics().upstream_errors.labels("upstream_unreachable").inc()
            return Rejection(Reason.UPSTREAM_UNREACHABLE, "forward", self.settings.retry_after)
        except TimeoutError:
            metrics().upstream_errors.labels("upstream_timeout").inc()
            return Rejection(Reason.UPSTREAM_TIMEOUT, "forward", self.settings.retry_after)
        except (aiohttp.ClientConnectionError, OSError):
            metrics().upstream_errors.labels("upstream_unreachable").inc()
            return Rejection(Reason.UPSTREAM_UNREACHABLE, "forward", self.settings.retry_after)
        except (aiohttp.ClientError, ValueError, BadAnswer):
            # Any other client error (ClientResponseError, ClientPayloadError: a truncated or badly
            # framed body; BadAnswer from the pool) or ValueError (an answer over max_response_bytes)
            # is the AS's answer gone wrong: a 503 that counts against the breaker, never a 500.
            metrics().upstream_errors.labels("upstream_bad_response").inc()
            return Rejection(Reason.UPSTREAM_BAD_RESPONSE, "forward", self.settings.retry_after)
        finally:
            in_flight.count -= 1
            m.inc(gauge, -1.0)
        m.observe(m.upstream_duration, time.perf_counter() - started)
        m.inc(m.child(m.upstream_responses, str(answer.status)))
        return answer

    async def _aiohttp(self, method: str, url: URL, body: bytes, headers: CIMultiDict[str]) -> UpstreamAnswer:
        async with self.session.request(method, url, data=body, headers=headers, allow_redirects=False) as response:
            payload = await self._read_capped(response)
            return UpstreamAnswer(response.status, payload, response.headers)

    async def reachable(self) -> bool:
        """Readiness: can a TCP (and TLS) connection be made to the AS origin?"""
        try:
            async with self.session.request(
                "HEAD",
                self.origin,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeouts.connect + 1),
            ) as response:
                await response.read()
            return True
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
