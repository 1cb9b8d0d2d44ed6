"""Stage issuer: `iss` names a configured, enabled client that may use the assertion's algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime


class Issuer:
    stage = "issuer"
    waits = False

    def __init__(self, clients: Mapping[str, ClientRuntime]) -> None:
        self.clients = clients

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None
        iss = ctx.jws.payload.get("iss")
        if not isinstance(iss, str) or not iss:
            return Rejection(Reason.ISS_MISSING, self.stage)
        # CAMARA SI: iss is the client_id. O(1) lookup; unknown and disabled clients share one
        # answer so the caller cannot tell which client ids exist.
        # The refusal is only noted here: the request goes on through the pre-signature guard and a
        # decoy verification (stage signature), so it costs what a real client's forgery costs.
        client = self.clients.get(iss)
        if client is None:
            ctx.issuer_refusal = Rejection(Reason.ISS_UNKNOWN, self.stage)
        elif not client.enabled:
            ctx.issuer_refusal = Rejection(Reason.CLIENT_DISABLED, self.stage)
        elif ctx.jws.header["alg"] not in client.algorithms:
            ctx.issuer_refusal = Rejection(Reason.ALG_NOT_ALLOWED_FOR_CLIENT, self.stage)
        else:
            ctx.client = client
        return None
