"""Stages 5, 10 (guard) and 14: token-bucket limits (GCRA) on the shared state.

`limits` (the library) offers fixed, moving and sliding windows of "N per period"; the contract
here is a rate plus a burst, which GCRA expresses with one cell per key and, in Redis, one round
trip per decision.
"""

from __future__ import annotations

import logging
from typing import Literal

from gateway.checks.context import RequestContext
from gateway.config.model import Bucket
from gateway.errors import Reason, Rejection
from gateway.metrics import metrics
from gateway.state.base import Decision, StateBackend, StateUnavailable
from gateway.state.memory import MemoryState

log = logging.getLogger("bearer_gateway.rate_limits")


class Limiter:
    """Takes from the configured backend; when it cannot answer, applies `on_error`."""

    def __init__(self, state: StateBackend, on_error: Literal["fail_closed", "fail_open"]) -> None:
        self.state = state
        self.on_error = on_error
        # fail_open falls back to per-process limits rather than to none at all.
        self.fallback = MemoryState(max_entries=1000) if state.name != "memory" else None
        decisions = metrics().rate_limit_decisions
        self._counters = {
            (limit, allowed): decisions.labels(limit, "allowed" if allowed else "limited")
            for limit in ("per_ip", "global", "per_issuer_unverified", "per_client")
            for allowed in (True, False)
        }
        self._errors = metrics().state_errors

    async def take(self, limit: str, key: str, bucket: Bucket, reason: Reason, stage: str) -> Rejection | None:
        interval = bucket.rate.period / bucket.rate.count
        try:
            decision = await self.state.take(f"{limit}:{key}", interval, bucket.burst)
        except StateUnavailable as exc:
            self._errors.labels("rate_limit", self.on_error).inc()
            if self.on_error == "fail_closed" or self.fallback is None:
                log.warning("rate-limit state unavailable (%s): refusing (fail_closed)", exc)
                return Rejection(Reason.STATE_UNAVAILABLE, stage, retry_after=1.0)
            log.warning("rate-limit state unavailable (%s): per-process limits (fail_open)", exc)
            decision = await self.fallback.take(f"{limit}:{key}", interval, bucket.burst)
        self._counters[(limit, decision.allowed)].inc()
        return None if decision.allowed else Rejection(reason, stage, retry_after=_retry(decision))


def _retry(decision: Decision) -> float:
    return max(decision.retry_after, 1.0)


class _BucketCheck:
    """One limit keyed by something in the request; the limit's name is its stage name."""

    stage: str
    reason: Reason

    def __init__(self, limiter: Limiter, bucket: Bucket) -> None:
        self.limiter = limiter
        self.bucket = bucket

    def key(self, ctx: RequestContext) -> str:
        raise NotImplementedError

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        return await self.limiter.take(self.stage, self.key(ctx), self.bucket, self.reason, self.stage)


class PerIPLimit(_BucketCheck):
    """Stage 5: the caller's address (X-Forwarded-For only from trusted proxies)."""

    stage = "per_ip"
    reason = Reason.RATE_LIMITED_IP

    def key(self, ctx: RequestContext) -> str:
        return ctx.client_address


class GlobalLimit(_BucketCheck):
    """Stage 5: everything the gateway accepts for processing, all callers together."""

    stage = "global"
    reason = Reason.RATE_LIMITED_GLOBAL

    def key(self, ctx: RequestContext) -> str:
        return "all"


class IssuerGuard(_BucketCheck):
    """Stage 10: a generous per-issuer budget before the signature is checked (a CPU guard).

    A forger can spend it for a real client, which is why it is generous and why the business
    quota is a separate limit counted only after verification.
    """

    stage = "per_issuer_unverified"
    reason = Reason.RATE_LIMITED_ISSUER

    def key(self, ctx: RequestContext) -> str:
        assert ctx.client is not None  # keyed by configured client ids only: bounded
        return ctx.client.client_id


class ClientQuota:
    """Stage 14: the business quota of a proven client (its own rate_limit, else the default)."""

    stage = "per_client"

    def __init__(self, limiter: Limiter, default: Bucket | None) -> None:
        self.limiter = limiter
        self.default = default

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.client is not None
        bucket = ctx.client.config.rate_limit or self.default
        if bucket is None:
            return None
        return await self.limiter.take(
            self.stage, ctx.client.client_id, bucket, Reason.CLIENT_QUOTA_EXCEEDED, self.stage
        )
