"""The token route: stages route, size, form, dispatch, the jwt-bearer checks, and the way up and back.

Engine-neutral: both listeners (aiohttp's, server/app.py, and the lean one, server/http1.py) give it
an `Incoming` and the body, and turn its result (a `Rejection` or a `Passed` answer) into bytes."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from gateway.audit import write_audit
from gateway.checks.context import RequestContext
from gateway.checks.pipeline import run_checks
from gateway.errors import Reason, Rejection, error_response
from gateway.metrics import metrics
from gateway.server.body import read_body
from gateway.server.caller import Caller
from gateway.server.correlation import REQUEST_ID_HEADER, request_id, trace_headers, trace_id
from gateway.server.form import FormError, parse_form
from gateway.server.incoming import Incoming
from gateway.upstream.answer import Passed, passthrough_answer, token_answer
from gateway.upstream.builder import JWT_BEARER

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("bearer_gateway")

RUNTIME = web.AppKey("runtime", object)
_FORM_TYPES = ("application/x-www-form-urlencoded",)
# The audit/metric reason of a request whose caller went away before its answer.
CANCELLED = "client_disconnected"
# Rejections after which the connection is closed: the unread rest of the body makes it useless.
CLOSING = frozenset({Reason.BODY_TOO_LARGE, Reason.BODY_READ_TIMEOUT})

Result = Passed | Rejection


class Outcome:
    """What the audit line and the metrics say about one request."""

    __slots__ = (
        "address",
        "caller",
        "client",
        "grant",
        "incoming",
        "reason",
        "request_id",
        "stage",
        "started",
        "status",
        "trace",
        "upstream_status",
    )

    def __init__(self, incoming: Incoming, caller: Caller) -> None:
        self.started = time.perf_counter()
        self.incoming = incoming
        self.caller = caller
        self.address = caller.address
        self.request_id = "-"
        self.status: int | None = None
        # The trace context forwarded to the AS (a valid traceparent, tracestate), else empty.
        self.trace: dict[str, str] = {}
        self.client = "unknown"
        self.grant = "none"
        self.reason = "ok"
        self.stage = "-"
        self.upstream_status: int | None = None


def runtime_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]  # type: ignore[return-value]


def passthrough_headers(incoming: Incoming, allowed: frozenset[str]) -> CIMultiDict[str]:
    """The caller's headers on the passthrough allow-list (`passthrough.headers`)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.headers.items():
        if name.lower() in allowed:
            out.add(name, value)
    return out


def content_type_ok(incoming: Incoming) -> bool:
    raw = incoming.headers.get("Content-Type", "")
    media, _, params = raw.partition(";")
    if media.strip().lower() not in _FORM_TYPES:
        return False
    params = params.strip().lower()
    # A charset other than UTF-8 would change how the body decodes; refuse rather than guess.
    return not params or params.replace(" ", "") in ("charset=utf-8", 'charset="utf-8"')


def begin(incoming: Incoming, runtime: Runtime) -> Outcome:
    """The request's caller, id and trace context; counted in flight until `account`."""
    caller = Caller(incoming, runtime.config.listen.trusted_proxies)
    outcome = Outcome(incoming, caller)
    headers = incoming.headers
    outcome.request_id = request_id(headers.get(REQUEST_ID_HEADER), caller.via_proxy)
    outcome.trace = trace_headers(headers.get("traceparent"), headers.get("tracestate"))
    m = metrics()
    m.inc(m.in_flight)
    return outcome


def route(incoming: Incoming, runtime: Runtime, outcome: Outcome, declared_length: int | None) -> Rejection | None:
    """Stages route and size (declared length): decided from the request head alone, before any body byte."""
    config = runtime.config
    if incoming.path not in config.token_paths:
        if config.passthrough.other_paths == "deny":
            return Rejection(Reason.PATH_DENIED, "route")
        outcome.grant = "other_path"
    else:
        if incoming.method != "POST":
            return Rejection(Reason.METHOD_NOT_ALLOWED, "route")
        if not content_type_ok(incoming):
            return Rejection(Reason.CONTENT_TYPE, "route")
        if incoming.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # A token request is a few hundred bytes: nothing to gain from compression, and a decoder
            # (bombs, ratio) would run on unauthenticated input before any check.
            return Rejection(Reason.CONTENT_ENCODING, "route")
    if declared_length is not None and declared_length > config.limits.max_body_bytes:
        return Rejection(Reason.BODY_TOO_LARGE, "size")
    return None


async def handle(incoming: Incoming, body: bytes, runtime: Runtime, outcome: Outcome) -> Result:
    """Stages form and dispatch onwards, for a request that passed `route` and whose body is read."""
    if outcome.grant == "other_path":
        return await passthrough(incoming, body, runtime, outcome)
    config = runtime.config
    try:
        form = parse_form(body, max_params=config.limits.max_form_params)
    except FormError as exc:
        return Rejection(exc.reason, "form")
    grant_type = form.get("grant_type")
    if not grant_type:
        return Rejection(Reason.GRANT_TYPE_MISSING, "form")
    if grant_type != JWT_BEARER:
        outcome.grant = "other"
        if config.passthrough.other_grants == "deny":
            return Rejection(Reason.GRANT_TYPE_DENIED, "dispatch")
        return await passthrough(incoming, body, runtime, outcome)
    outcome.grant = "jwt-bearer"
    caller = outcome.caller
    ctx = RequestContext(
        authorization=incoming.headers.get("Authorization"),
        form=form,
        client_address=caller.address,
        received_at=time.time(),
    )
    rejection = await run_checks(runtime.pipeline, ctx)
    if rejection is not None:
        # Only a client proven by its signature is named in logs and metrics.
        if ctx.key is not None and ctx.client is not None:
            outcome.client = ctx.client.client_id
        return rejection
    client = ctx.client
    assert client is not None and ctx.key is not None  # the signature stage passed
    outcome.client = client.client_id
    up_body, headers = client.builder.build(ctx.form, ctx.claims, ctx.caller_credentials)
    headers.update(caller.forwarding_headers(incoming))
    headers[REQUEST_ID_HEADER] = outcome.request_id
    headers.update(outcome.trace)
    answer = await client.upstream.send("POST", client.upstream.token_url, up_body, headers, pooled=True)
    if isinstance(answer, Rejection):
        return answer
    outcome.upstream_status = answer.status
    result = token_answer(
        answer,
        client_id=client.client_id,
        injected=client.injects_credentials and ctx.caller_credentials is None,
        drop_refresh_token=config.profile.drop_refresh_token,
    )
    if isinstance(result, Passed) and result.status >= 400:
        outcome.reason, outcome.stage = "upstream_error", "response"
    return result


async def passthrough(incoming: Incoming, body: bytes, runtime: Runtime, outcome: Outcome) -> Result:
    """Other grants and (by policy) other paths go to the AS as they came, headers cleaned."""
    caller = outcome.caller
    ctx = RequestContext(authorization=None, form={}, client_address=caller.address, received_at=time.time())
    rejection = await run_checks(runtime.passthrough_checks, ctx)
    if rejection is not None:
        return rejection
    upstream = runtime.passthrough_upstream
    if incoming.path in runtime.config.token_paths:
        url = upstream.token_url
    else:
        url = upstream.origin.with_path(incoming.path).with_query(incoming.query_string)
    headers = passthrough_headers(incoming, runtime.passthrough_headers)
    headers.update(caller.forwarding_headers(incoming))
    headers[REQUEST_ID_HEADER] = outcome.request_id
    headers.update(outcome.trace)
    answer = await upstream.send(incoming.method, url, body, headers)
    if isinstance(answer, Rejection):
        return answer
    outcome.upstream_status = answer.status
    outcome.reason = "ok" if answer.status < 400 else "upstream_error"
    return passthrough_answer(answer)


def settle(result: Result, outcome: Outcome) -> None:
    """Record a rejection's reason and stage in the outcome."""
    if isinstance(result, Rejection):
        outcome.reason, outcome.stage = result.reason.code, result.stage


def internal_error() -> Rejection:
    log.exception("internal error handling a token request")
    return Rejection(Reason.INTERNAL_ERROR, "internal")


def cancelled(outcome: Outcome) -> None:
    """The caller disconnected (or shutdown) before its answer: no answer goes out, but the request is
    still accounted for, with what it had reached (upstream_status)."""
    outcome.reason, outcome.stage = CANCELLED, "connection"


def account(runtime: Runtime, outcome: Outcome) -> None:
    """The metrics and the audit line for one request, whatever became of it."""
    m = metrics()
    m.inc(m.in_flight, -1.0)
    latency = time.perf_counter() - outcome.started
    result = "accepted" if outcome.reason == "ok" else "rejected"
    m.inc(m.child(m.requests, result, outcome.reason, outcome.client, outcome.grant))
    m.observe(m.child(m.request_duration, result), latency)
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
            method=outcome.incoming.method,
            path=outcome.incoming.path,
            user_agent=outcome.incoming.headers.get("User-Agent", ""),
            trace_id=trace_id(outcome.trace["traceparent"]) if outcome.trace else None,
        )


def incoming_of(request: web.Request) -> Incoming:
    return Incoming(
        request.method, request.path, request.query_string, request.headers, request.remote, request.scheme
    )


class TokenHandler:
    """The token route on the aiohttp listener: POSTs on the token paths and, by policy, other paths."""

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        runtime = runtime_of(request)
        incoming = incoming_of(request)
        outcome = begin(incoming, runtime)
        try:
            result: Result | None = route(incoming, runtime, outcome, request.content_length)
            if result is None:
                body = await read_body(request, runtime.config.limits)
                result = body if isinstance(body, Rejection) else await handle(incoming, body, runtime, outcome)
        except Exception:
            result = internal_error()
        except BaseException:
            cancelled(outcome)
            account(runtime, outcome)
            raise
        settle(result, outcome)
        response = self._response(result, runtime)
        # Every answer names its request id, the one in the audit line and sent to the AS.
        response.headers[REQUEST_ID_HEADER] = outcome.request_id
        outcome.status = response.status
        account(runtime, outcome)
        return response

    @staticmethod
    def _response(result: Result, runtime: Runtime) -> web.Response:
        if isinstance(result, Passed):
            return web.Response(status=result.status, body=result.body, headers=result.headers)
        response = error_response(result, runtime.config.profile.errors)
        if result.reason in CLOSING:
            # The unread rest of the body makes the connection useless; do not drain it.
            response.force_close()
        return response
