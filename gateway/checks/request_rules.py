"""Stage request_rules: the jwt-bearer request's own parameters (RFC 7523 §2.1, CAMARA SI)."""

from __future__ import annotations

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection


class RequestRules:
    stage = "request_rules"
    waits = False

    def __init__(self, forbid_scope_parameter: bool) -> None:
        self.forbid_scope_parameter = forbid_scope_parameter

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        # RFC 7523 §2.1: the assertion parameter carries a single JWT.
        if not ctx.form.get("assertion"):
            return Rejection(Reason.ASSERTION_MISSING, self.stage)
        # CAMARA SI: the scope travels in the assertion's scope claim; the form parameter MUST NOT be sent.
        if self.forbid_scope_parameter and "scope" in ctx.form:
            return Rejection(Reason.SCOPE_PARAMETER, self.stage)
        return None
