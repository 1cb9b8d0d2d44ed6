"""The token route: stages route, size, form, dispatch, the jwt-bearer checks, and the way up and back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from ipaddress import ip_address
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from gateway.audit import write_audit
from gateway.checks.context import RequestContext
from gateway.errors import NO_STORE_HEADERS, Reason, Rejection, error_response
from gateway.metrics import metrics
from gateway.server.correlation import REQUEST_ID_HEADER, request_id, trace_headers, trace_id
from gateway.server.form import FormError, parse_form
from gateway.upstream.builder import JWT_BEARER
from gateway.upstream.forward import UpstreamAnswer, end_to_end_headers

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime
    from gateway.runtime import Runtime

log = logging.getLogger("bearer_gateway")

RUNTIME = web.AppKey("runtime", object)
_FORM_TYPES = ("application/x-www-form-urlencoded",)
# What an AS says when it refuses the client credentials the gateway injected (RFC 6749 §5.2;
# Keycloak answers unauthorized_client for a wrong secret).
_CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
# The audit/metric reason of a request whose caller went away before its answer.
CANCELLED = "client_disconnected"


class Outcome:
    """What the audit line and the metrics say about one request."""

    __slots__ = (
        "address",
        "client",
        "grant",
        "reason",
        "request_id",
        "stage",
        "status",
        "trace",
        "upstream_status",
    )

    def __init__(self) -> None:
        self.request_id = "-"
        self.status: int | None = None
        # The trace context forwarded to the AS (a valid traceparent, tracestate), else empty.
        self.trace: dict[str, str] = {}
        self.address = "-"
        self.client = "unknown"
        self.grant = "none"
        self.reason = "ok"
        self.stage = "-"
        self.upstream_status: int | None = None


def runtime_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]  # type: ignore[return-value]


def forwarded_for(request: web.Request) -> str:
    """Every X-Forwarded-For line joined (RFC 9110 §5.3): a proxy may append its own separate line."""
    return ", ".join(request.headers.getall("X-Forwarded-For", ()))


def passthrough_headers(request: web.Request, allowed: frozenset[str]) -> CIMultiDict[str]:
    """The caller's headers on the passthrough allow-list (`passthrough.headers`)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() in allowed:
            out.add(name, value)
    return out


class Caller:
    """Where a request comes from: the peer, whether it is a trusted proxy, and the client address."""

    __slots__ = ("address", "peer", "via_proxy")

    def __init__(self, request: web.Request, runtime: Runtime) -> None:
        self.peer = request.remote or "-"
        self.address = self.peer
        self.via_proxy = False
        trusted = runtime.config.listen.trusted_proxies
        if not trusted or self.peer == "-":
            return
        try:
            chain = [ip_address(self.peer)]
            self.via_proxy = any(chain[0] in net for net in trusted)
            forwarded = forwarded_for(request)
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            # X-Forwarded-For is honoured only from a trusted proxy: walk from the nearest hop
            # outwards; the first untrusted address is the client.
            for hop in reversed(hops):
                if not any(chain[-1] in net for net in trusted):
                    break
                chain.append(ip_address(hop))
            self.address = str(chain[-1])
        except ValueError:
            self.address = self.peer

    def forwarding_headers(self, request: web.Request) -> dict[str, str]:
        """X-Forwarded-For/-Proto for the AS: a trusted proxy's chain is extended, anyone else's replaced."""
        existing = forwarded_for(request)
        proto = request.headers.get("X-Forwarded-Proto", request.scheme) if self.via_proxy else request.scheme
        peer = "" if self.peer == "-" else self.peer
        chain = f"{existing}, {peer}" if (self.via_proxy and existing) else peer
        return {"X-Forwarded-For": chain, "X-Forwarded-Proto": proto}


async def read_body(request: web.Request, runtime: Runtime) -> bytes | Rejection:
    """Stage size: refuse a declared oversize body unread; read any body with the same cap and a deadline."""
    limits = runtime.config.limits
    cap = limits.max_body_bytes
    if request.content_length is not None and request.content_length > cap:
        return Rejection(Reason.BODY_TOO_LARGE, "size")
    if request.content.is_eof():
        # The whole body came with the headers (the usual token request): take it, no deadline to arm.
        body = request.content.read_nowait()
        return Rejection(Reason.BODY_TOO_LARGE, "size") if len(body) > cap else body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout):
            while True:
                chunk = await request.content.read(cap + 1 - size)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    return Rejection(Reason.BODY_TOO_LARGE, "size")
                chunks.append(chunk)
    except TimeoutError:
        return Rejection(Reason.BODY_READ_TIMEOUT, "connection")
    return b"".join(chunks)


def content_type_ok(request: web.Request) -> bool:
    raw = request.headers.get("Content-Type", "")
    media, _, params = raw.partition(";")
    if media.strip().lower() not in _FORM_TYPES:
        return False
    params = params.strip().lower()
    # A charset other than UTF-8 would change how the body decodes; refuse rather than guess.
    return not params or params.replace(" ", "") in ("charset=utf-8", 'charset="utf-8"')


class TokenHandler:
    """Handles POSTs on the token paths and, by policy, other paths."""

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        runtime = runtime_of(request)
        started = time.perf_counter()
        outcome = Outcome()
        m = metrics()
        m.in_flight.inc()
        try:
            response = await self._handle(request, runtime, outcome)
        except Exception:
            log.exception("internal error handling a token request")
            outcome.reason, outcome.stage = Reason.INTERNAL_ERROR.code, "internal"
            response = error_response(Rejection(Reason.INTERNAL_ERROR, "internal"), runtime.config.profile.errors)
        except BaseException:
            # Cancelled (the caller disconnected, handler_cancellation) or shut down: no answer goes
            # out, but the request is still accounted for, with what it had reached (upstream_status).
            outcome.reason, outcome.stage = CANCELLED, "connection"
            self._account(runtime, outcome, started, request)
            raise
        finally:
            m.in_flight.dec()
        # Every answer names its request id, the one in the audit line and sent to the AS.
        response.headers[REQUEST_ID_HEADER] = outcome.request_id
        outcome.status = response.status
        self._account(runtime, outcome, started, request)
        return response

    def _account(self, runtime: Runtime, outcome: Outcome, started: float, request: web.Request) -> None:
        """The metrics and the audit line for one request, whatever became of it."""
        m = metrics()
        latency = time.perf_counter() - started
        result = "accepted" if outcome.reason == "ok" else "rejected"
        m.child(m.requests, result, outcome.reason, outcome.client, outcome.grant).inc()
        m.child(m.request_duration, result).observe(latency)
        if runtime.config.logging.audit:
            write_audit(
                request_id=outcome.request_id,
                client_address=outcome.address,
                client=outcome.client,
                grant=outcome.grant,
                outcome=result,
                reason=outcome.reason,
                stage=outcome.stage,
                latency=latency,
                upstream_status=outcome.upstream_status,
                status=outcome.status,
                method=request.method,
                path=request.path,
                user_agent=request.headers.get("User-Agent", ""),
                trace_id=trace_id(outcome.trace["traceparent"]) if outcome.trace else None,
            )

    def _reject(self, rejection: Rejection, runtime: Runtime, outcome: Outcome) -> web.Response:
        outcome.reason, outcome.stage = rejection.reason.code, rejection.stage
        response = error_response(rejection, runtime.config.profile.errors)
        if rejection.reason in (Reason.BODY_TOO_LARGE, Reason.BODY_READ_TIMEOUT):
            # The unread rest of the body makes the connection useless; do not drain it.
            response.force_close()
        return response

    async def _handle(self, request: web.Request, runtime: Runtime, outcome: Outcome) -> web.StreamResponse:
        config = runtime.config
        caller = Caller(request, runtime)
        headers = request.headers
        outcome.request_id = request_id(headers.get(REQUEST_ID_HEADER), caller.via_proxy)
        outcome.trace = trace_headers(headers.get("traceparent"), headers.get("tracestate"))
        outcome.address = caller.address
        # Stage route.
        if request.path not in config.token_paths:
            if config.passthrough.other_paths == "deny":
                return self._reject(Rejection(Reason.PATH_DENIED, "route"), runtime, outcome)
            outcome.grant = "other_path"
            return await self._passthrough(request, runtime, outcome, caller, None)
        if request.method != "POST":
            return self._reject(Rejection(Reason.METHOD_NOT_ALLOWED, "route"), runtime, outcome)
        if not content_type_ok(request):
            return self._reject(Rejection(Reason.CONTENT_TYPE, "route"), runtime, outcome)
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # A token request is a few hundred bytes: nothing to gain from compression, and a decoder
            # (bombs, ratio) would run on unauthenticated input before any check.
            return self._reject(Rejection(Reason.CONTENT_ENCODING, "route"), runtime, outcome)
        # Stage size.
        body = await read_body(request, runtime)
        if isinstance(body, Rejection):
            return self._reject(body, runtime, outcome)
        # Stage form: strict parse.
        try:
            form = parse_form(body, max_params=config.limits.max_form_params)
        except FormError as exc:
            return self._reject(Rejection(exc.reason, "form"), runtime, outcome)
        grant_type = form.get("grant_type")
        if not grant_type:
            return self._reject(Rejection(Reason.GRANT_TYPE_MISSING, "form"), runtime, outcome)
        # Stage dispatch.
        if grant_type != JWT_BEARER:
            outcome.grant = "other"
            if config.passthrough.other_grants == "deny":
                return self._reject(Rejection(Reason.GRANT_TYPE_DENIED, "dispatch"), runtime, outcome)
            return await self._passthrough(request, runtime, outcome, caller, body)
        outcome.grant = "jwt-bearer"
        return await self._jwt_bearer(request, runtime, outcome, caller, form)

    async def _jwt_bearer(
        self,
        request: web.Request,
        runtime: Runtime,
        outcome: Outcome,
        caller: Caller,
        form: dict[str, str],
    ) -> web.StreamResponse:
        ctx = RequestContext(request=request, form=form, client_address=caller.address, received_at=time.time())
        m = metrics()
        stage_timer = m.stage_duration
        for check in runtime.pipeline:
            t0 = time.perf_counter()
            rejection = await check(ctx)
            m.child(stage_timer, check.stage).observe(time.perf_counter() - t0)
            if rejection is not None:
                # Only a client proven by its signature is named in logs and metrics.
                if ctx.key is not None and ctx.client is not None:
                    outcome.client = ctx.client.client_id
                return self._reject(rejection, runtime, outcome)
        client = ctx.client
        assert client is not None and ctx.key is not None  # the signature stage passed
        outcome.client = client.client_id
        body, headers = client.builder.build(ctx.form, ctx.claims, ctx.caller_credentials)
        headers.update(caller.forwarding_headers(request))
        headers[REQUEST_ID_HEADER] = outcome.request_id
        headers.update(outcome.trace)
        answer = await client.upstream.send("POST", client.upstream.token_url, body, headers)
        if isinstance(answer, Rejection):
            return self._reject(answer, runtime, outcome)
        outcome.upstream_status = answer.status
        return self._token_answer(answer, client, ctx, runtime, outcome)

    def _token_answer(
        self,
        answer: UpstreamAnswer,
        client: ClientRuntime,
        ctx: RequestContext,
        runtime: Runtime,
        outcome: Outcome,
    ) -> web.Response:
        """Stage response: pass the AS answer through, minus refresh_token; credential refusals are ours to own."""
        document = None
        # Parse only an answer that can matter: a refusal, or a 200 that may carry a refresh token (a
        # member name spelled with JSON escapes needs a backslash). Most 200s then go through unparsed.
        status = answer.status
        relevant = status in (400, 401) or (
            status == 200
            and runtime.config.profile.drop_refresh_token
            and (b"refresh_token" in answer.body or b"\\" in answer.body)
        )
        if relevant and answer.headers.get("Content-Type", "").startswith("application/json"):
            with contextlib.suppress(ValueError):
                document = json.loads(answer.body)
        if (
            status in (400, 401)
            and isinstance(document, dict)
            and document.get("error") in _CREDENTIAL_ERRORS
            and client.injects_credentials
            and ctx.caller_credentials is None
        ):
            metrics().upstream_credential_rejections.labels(client.client_id).inc()
            log.error(
                "authorization server refused the credentials injected for client %s (%s): check its client_auth",
                client.client_id,
                document.get("error"),
            )
            return self._reject(Rejection(Reason.UPSTREAM_REJECTED_CREDENTIALS, "response"), runtime, outcome)
        body = answer.body
        if (
            status == 200
            and runtime.config.profile.drop_refresh_token
            and isinstance(document, dict)
            and "refresh_token" in document
        ):
            # CAMARA SI: the answer MUST NOT carry a refresh token.
            del document["refresh_token"]
            body = json.dumps(document, separators=(",", ":")).encode()
        if status >= 400:
            outcome.reason, outcome.stage = "upstream_error", "response"
        headers = end_to_end_headers(answer.headers, up=False)
        headers.popall("Content-Encoding", None)
        for name, value in NO_STORE_HEADERS.items():
            headers.setdefault(name, value)
        return web.Response(status=status, body=body, headers=headers)

    async def _passthrough(
        self,
        request: web.Request,
        runtime: Runtime,
        outcome: Outcome,
        caller: Caller,
        body: bytes | None,
    ) -> web.StreamResponse:
        """Other grants and (by policy) other paths go to the AS as they came, headers cleaned."""
        ctx = RequestContext(request=request, form={}, client_address=caller.address, received_at=time.time())
        for check in runtime.passthrough_checks:
            rejection = await check(ctx)
            if rejection is not None:
                return self._reject(rejection, runtime, outcome)
        upstream = runtime.passthrough_upstream
        if body is None:
            read = await read_body(request, runtime)
            if isinstance(read, Rejection):
                return self._reject(read, runtime, outcome)
            body = read
        if request.path in runtime.config.token_paths:
            url = upstream.token_url
        else:
            url = upstream.origin.with_path(request.path).with_query(request.query_string)
        headers = passthrough_headers(request, runtime.passthrough_headers)
        headers.update(caller.forwarding_headers(request))
        headers[REQUEST_ID_HEADER] = outcome.request_id
        headers.update(outcome.trace)
        answer = await upstream.send(request.method, url, body, headers)
        if isinstance(answer, Rejection):
            return self._reject(answer, runtime, outcome)
        outcome.upstream_status = answer.status
        outcome.reason = "ok" if answer.status < 400 else "upstream_error"
        return web.Response(
            status=answer.status, body=answer.body, headers=end_to_end_headers(answer.headers, up=False)
        )
