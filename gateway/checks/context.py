"""What a check reads and writes: one object per jwt-bearer request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from gateway.errors import Rejection

if TYPE_CHECKING:
    from gateway.jose.jws import CompactJWS
    from gateway.jose.keys import VerificationKey
    from gateway.runtime import ClientRuntime


@dataclass(slots=True)
class RequestContext:
    request: web.Request
    form: dict[str, str]
    client_address: str
    received_at: float  # wall-clock seconds at receipt: the reference for exp/iat/nbf
    jws: CompactJWS | None = None
    client: ClientRuntime | None = None
    key: VerificationKey | None = None
    # Incoming client authentication to remove before forwarding (policy `strip`).
    strip_client_auth: bool = False
    # Policy `forward`: the caller's own client authentication goes upstream instead of ours.
    caller_client_auth: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def claims(self) -> dict[str, Any]:
        assert self.jws is not None
        return self.jws.payload


class Check(Protocol):
    """A check looks at the context and either passes (None) or stops the request."""

    stage: str

    async def __call__(self, ctx: RequestContext) -> Rejection | None: ...
