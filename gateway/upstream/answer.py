"""Stage response: what the caller gets from the AS's answer to a jwt-bearer request.

The answer passes through minus `refresh_token` (CAMARA); an AS refusal of the credentials the gateway
injected is the gateway's own misconfiguration (502), never the caller's fault."""

from __future__ import annotations

import contextlib
import json
import logging

from multidict import CIMultiDict

from gateway.errors import NO_STORE_HEADERS, Reason, Rejection
from gateway.metrics import metrics
from gateway.upstream.forward import UpstreamAnswer, end_to_end_headers

log = logging.getLogger("bearer_gateway")

# What an AS says when it refuses the client credentials the gateway injected (RFC 6749 §5.2;
# Keycloak answers unauthorized_client for a wrong secret).
_CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


class Passed:
    """An AS answer as it goes back to the caller."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def token_answer(
    answer: UpstreamAnswer, *, client_id: str, injected: bool, drop_refresh_token: bool
) -> Passed | Rejection:
    """`injected`: the gateway's own client authentication went with the request (not the caller's)."""
    document = None
    # Parse only an answer that can matter: a refusal, or a 200 that may carry a refresh token (a
    # member name spelled with JSON escapes needs a backslash). Most 200s then go through unparsed.
    status = answer.status
    relevant = status in (400, 401) or (
        status == 200 and drop_refresh_token and (b"refresh_token" in answer.body or b"\\" in answer.body)
    )
    if relevant and answer.headers.get("Content-Type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):
            document = json.loads(answer.body)
    if (
        status in (400, 401)
        and isinstance(document, dict)
        and document.get("error") in _CREDENTIAL_ERRORS
        and injected
    ):
        metrics().upstream_credential_rejections.labels(client_id).inc()
        log.error(
            "authorization server refused the credentials injected for client %s (%s): check its client_auth",
            client_id,
            document.get("error"),
        )
        return Rejection(Reason.UPSTREAM_REJECTED_CREDENTIALS, "response")
    body = answer.body
    if status == 200 and drop_refresh_token and isinstance(document, dict) and "refresh_token" in document:
        # CAMARA SI: the answer MUST NOT carry a refresh token.
        del document["refresh_token"]
        body = json.dumps(document, separators=(",", ":")).encode()
    headers = end_to_end_headers(answer.headers, up=False)
    headers.popall("Content-Encoding", None)
    for name, value in NO_STORE_HEADERS.items():
        headers.setdefault(name, value)
    return Passed(status, headers, body)


def passthrough_answer(answer: UpstreamAnswer) -> Passed:
    """Other grants and paths: the AS answer as it came, hop-by-hop headers removed."""
    return Passed(answer.status, end_to_end_headers(answer.headers, up=False), answer.body)
