"""Stage 6: incoming client authentication besides the assertion (RFC 6749 §2.3: one method only)."""

from __future__ import annotations

from typing import Literal

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection

CLIENT_AUTH_PARAMETERS = ("client_id", "client_secret", "client_assertion", "client_assertion_type")


class ClientAuthConflict:
    """In CAMARA the signed assertion is the client authentication; anything else is a second one."""

    stage = "client_auth_conflict"

    def __init__(self, policy: Literal["reject", "strip", "forward"]) -> None:
        self.policy = policy

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        form = ctx.form
        present = "Authorization" in ctx.request.headers or any(p in form for p in CLIENT_AUTH_PARAMETERS)
        if not present:
            return None
        if self.policy == "reject":
            return Rejection(Reason.CLIENT_AUTH_CONFLICT, self.stage)
        if self.policy == "strip":
            ctx.strip_client_auth = True
            for name in CLIENT_AUTH_PARAMETERS:
                form.pop(name, None)
        else:
            ctx.caller_client_auth = True
        return None
