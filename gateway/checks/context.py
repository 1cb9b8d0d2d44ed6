"""What a check reads and writes: one object per jwt-bearer request."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import Rejection

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime
    from gateway.jose.jws import CompactJWS
    from gateway.jose.keys import VerificationKey
    from gateway.upstream.builder import CallerCredentials


@dataclass(slots=True)
class RequestContext:
    # The caller's Authorization header (stage client_auth_conflict), None when absent.
    authorization: str | None
    form: dict[str, str]
    client_address: str
    received_at: float  # wall-clock seconds at receipt: the reference for exp/iat/nbf
    jws: CompactJWS | None = None
    client: ClientRuntime | None = None
    key: VerificationKey | None = None
    # Policy `forward`: the caller's own client authentication, sent upstream instead of ours.
    caller_credentials: CallerCredentials | None = None
    # The issuer stage's verdict on an unknown or unusable `iss`, given only after the same guard and
    # a decoy verification as a real client's forgery costs (no timing or 429 oracle of client ids).
    issuer_refusal: Rejection | None = None

    @property
    def claims(self) -> dict[str, Any]:
        assert self.jws is not None
        return self.jws.payload


class Check(Protocol):
    """A check looks at the context and either passes (None) or stops the request. A check that never
    waits (`waits = False`) returns its verdict; one that may wait on state or a remote JWKS returns an
    awaitable of it. The loop (checks/pipeline.run_checks) awaits only the latter."""

    stage: str
    waits: bool

    def __call__(self, ctx: RequestContext) -> Rejection | Awaitable[Rejection | None] | None: ...
