"""Stage client_admission: the proven client's jti, once, and its quota, in one atomic state call.

RFC 7523 §3 item 7: each (iss, jti) is accepted once for the assertion's remaining life. Both run
only after the signature verified, so a forger can spend neither a client's quota nor its jti.
A replay is refused before any quota is spent; an assertion over quota is not recorded, so it
can be retried after Retry-After.

profile.replay chooses the replay key (README "Replay policy"): the jti, or for clients that send
none a digest of the signed content (header.payload as sent, which the signature covers). Not the
whole compact JWS: an ES256 signature (r, s) has a twin (r, n - s) that anyone can compute and that
verifies too, so a digest over the signature would let a captured assertion be replayed once more.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING

from gateway.checks.context import RequestContext
from gateway.checks.rate_limits import Limit, Limiter
from gateway.config.model import Bucket
from gateway.errors import Reason, Rejection
from gateway.metrics import metrics

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime


class UpstreamGuard:
    """Stage upstream_guard's local checks (max_in_flight, an open circuit) asked before the jti is spent: an
    assertion refused with 503 because the AS was never called can be retried as it is."""

    stage = "upstream_guard"
    waits = False

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.client is not None
        return ctx.client.upstream.guard()


class ClientAdmission:
    stage = "client_admission"
    waits = True

    def __init__(
        self, limiter: Limiter, default_quota: Bucket | None, clock_skew: float, replay: str = "jti"
    ) -> None:
        self.limiter = limiter
        self.default_quota = default_quota
        self.skew = clock_skew
        self.replay = replay
        # Per client id: its quota as a limit (own rate_limit, else the default), built once.
        self._quotas: dict[str, list[Limit]] = {}

    def _quota(self, client: ClientRuntime) -> list[Limit]:
        limits = self._quotas.get(client.client_id)
        if limits is None:
            bucket = client.config.rate_limit or self.default_quota
            limits = [Limit("per_client", bucket, Reason.CLIENT_QUOTA_EXCEEDED)] if bucket is not None else []
            self._quotas[client.client_id] = limits
        return limits

    def replay_key(self, ctx: RequestContext) -> str:
        """What may be accepted only once: the jti, or (replay: assertion) the signed content's SHA-256."""
        assert ctx.jws is not None
        if self.replay == "jti":
            return str(ctx.jws.payload["jti"])
        digest = hashlib.sha256(ctx.jws.signing_input).digest()
        return "sha256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None and ctx.client is not None
        client = ctx.client
        if self.replay == "off":
            limits = self._quota(client)
            return await self.limiter.take(limits, [client.client_id], self.stage) if limits else None
        claims = ctx.jws.payload
        # Keep the key until exp + skew: after that the claims stage refuses the assertion anyway.
        ttl = float(claims["exp"]) + self.skew - time.time() + 1.0
        key = self.replay_key(ctx)
        decision = await self.limiter.admit(key, ttl, self._quota(client), client.client_id, self.stage)
        if isinstance(decision, Rejection):
            return decision
        if decision.replayed:
            metrics().replay_hits.labels(client.client_id).inc()
            return Rejection(Reason.REPLAY, self.stage)
        if not decision.allowed:
            return Rejection(Reason.CLIENT_QUOTA_EXCEEDED, self.stage, retry_after=max(decision.retry_after, 1.0))
        return None
