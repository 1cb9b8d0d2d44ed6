"""Stage 10: `iss` names a configured, enabled client that may use the assertion's algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime


class Issuer:
    stage = "issuer"

    def __init__(self, clients: Mapping[str, ClientRuntime]) -> None:
        self.clients = clients

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None
        iss = ctx.jws.payload.get("iss")
        if not isinstance(iss, str) or not iss:
            return Rejection(Reason.ISS_MISSING, self.stage)
        # CAMARA SI: iss is the client_id. O(1) lookup; unknown and disabled clients share one
        # answer so the caller cannot tell which client ids exist.
        client = self.clients.get(iss)
        if client is None:
            return Rejection(Reason.ISS_UNKNOWN, self.stage)
        if not client.enabled:
            return Rejection(Reason.CLIENT_DISABLED, self.stage)
        ctx.client = client
        if ctx.jws.header["alg"] not in client.algorithms:
            return Rejection(Reason.ALG_NOT_ALLOWED_FOR_CLIENT, self.stage)
        return None
