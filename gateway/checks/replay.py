"""Stage 13: each (iss, jti) is accepted once for the assertion's remaining life (RFC 7523 §3 item 7)."""

from __future__ import annotations

import logging
import time
from typing import Literal

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection
from gateway.metrics import metrics
from gateway.state.base import StateBackend, StateUnavailable
from gateway.state.memory import MemoryState

log = logging.getLogger("bearer_gateway.replay")


class Replay:
    """Runs only after the signature verified, so a forger cannot burn a real client's jti."""

    stage = "replay"

    def __init__(self, state: StateBackend, clock_skew: float, on_error: Literal["fail_closed", "fail_open"]) -> None:
        self.state = state
        self.skew = clock_skew
        self.on_error = on_error
        # fail_open still remembers jti values, per process, rather than accepting replays outright.
        self.fallback = MemoryState() if state.name != "memory" else None

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None and ctx.client is not None
        claims = ctx.jws.payload
        # Keep the jti until exp + skew: after that the claims stage refuses the assertion anyway.
        ttl = float(claims["exp"]) + self.skew - time.time() + 1.0
        key = f"{ctx.client.client_id}\x00{claims['jti']}"
        try:
            fresh = await self.state.claim_once(key, ttl)
        except StateUnavailable:
            metrics().state_errors.labels("replay", self.on_error).inc()
            if self.on_error == "fail_closed" or self.fallback is None:
                return Rejection(Reason.STATE_UNAVAILABLE, self.stage, retry_after=1.0)
            log.warning("replay state unavailable: per-process replay set (fail_open)")
            fresh = await self.fallback.claim_once(key, ttl)
        if not fresh:
            metrics().replay_hits.labels(ctx.client.client_id).inc()
            return Rejection(Reason.REPLAY, self.stage)
        return None
