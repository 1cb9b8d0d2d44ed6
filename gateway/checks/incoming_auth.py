"""Stage client_auth_conflict: incoming client authentication besides the assertion (RFC 6749 §2.3: one method only)."""

from __future__ import annotations

from typing import Literal

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection
from gateway.upstream.builder import CallerCredentials
from gateway.upstream.injected_auth import CLIENT_AUTH_PARAMETERS


class ClientAuthConflict:
    """In CAMARA the signed assertion is the client authentication; anything else is a second one."""

    stage = "client_auth_conflict"
    waits = False

    def __init__(self, policy: Literal["reject", "strip", "forward"]) -> None:
        self.policy = policy

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        form = ctx.form
        authorization = ctx.authorization
        present = authorization is not None or any(p in form for p in CLIENT_AUTH_PARAMETERS)
        if not present:
            return None
        if self.policy == "reject":
            return Rejection(Reason.CLIENT_AUTH_CONFLICT, self.stage)
        if self.policy == "strip":
            for name in CLIENT_AUTH_PARAMETERS:
                form.pop(name, None)
        else:
            # Policy `forward`: the caller's own client authentication goes upstream instead of ours.
            ctx.caller_credentials = CallerCredentials(
                {name: form[name] for name in CLIENT_AUTH_PARAMETERS if name in form}, authorization or None
            )
        return None
