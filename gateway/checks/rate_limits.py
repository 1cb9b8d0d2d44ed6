"""Token-bucket limits (GCRA) on the shared state: stages request_limits and per_issuer_unverified,
and the Limiter every state decision goes through (client_admission too).

`limits` (the library) offers fixed, moving and sliding windows of "N per period"; the contract
here is a rate plus a burst, which GCRA expresses with one cell per key and, in Redis, one round
trip per decision however many cells it takes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from ipaddress import ip_network
from typing import Literal

from gateway.checks.context import RequestContext
from gateway.config.model import Bucket, State
from gateway.errors import Reason, Rejection
from gateway.metrics import metrics
from gateway.state import StateBackend, StateUnavailable, create_state
from gateway.state.base import Cell, Decision

log = logging.getLogger("bearer_gateway.rate_limits")
LIMIT_NAMES = ("per_ip", "global", "per_issuer_unverified", "per_client")


@dataclass(frozen=True, slots=True)
class Limit:
    """A configured bucket under its name (the config key, the metric label) and its reason code."""

    name: str
    bucket: Bucket
    reason: Reason

    def cell(self, key: str) -> Cell:
        rate = self.bucket.rate
        return Cell(f"{self.name}:{key}", rate.period / rate.count, self.bucket.burst)


class Limiter:
    """Every state decision of a request: asks the configured backend; when it cannot answer, applies
    `on_error` (fail_open: a per-process fallback); counts each limit's decision."""

    def __init__(
        self, state: StateBackend, on_error: Literal["fail_closed", "fail_open"], fallback_entries: int = 100_000
    ) -> None:
        self._state = state
        self.on_error = on_error
        # fail_open falls back to per-process state rather than to none at all.
        fallback = State(max_replay_entries=fallback_entries)
        self._fallback = create_state(fallback) if state.name != "memory" else None
        decisions = metrics().rate_limit_decisions
        self._counters = {
            (name, allowed): decisions.labels(name, "allowed" if allowed else "limited")
            for name in LIMIT_NAMES
            for allowed in (True, False)
        }
        self._errors = metrics().state_errors

    def adopt_fallback(self, previous: Limiter) -> None:
        """Keep the previous limiter's fail_open fallback (its replay set) across a reload."""
        if self._fallback is not None and previous._fallback is not None:
            self._fallback = previous._fallback

    def _count(self, limits: Sequence[Limit], decision: Decision) -> None:
        inc = metrics().inc
        for index, limit in enumerate(limits):
            inc(self._counters[(limit.name, index != decision.refused)])
            if index == decision.refused:
                break

    async def _decide(self, operation: str, call: Callable[[StateBackend], Awaitable[Decision]]) -> Decision | None:
        """`call` on the backend; on StateUnavailable, on the fallback (fail_open) or None (fail_closed)."""
        try:
            return await call(self._state)
        except StateUnavailable as exc:
            self._errors.labels(operation, self.on_error).inc()
            if self.on_error == "fail_closed" or self._fallback is None:
                log.warning("%s state unavailable (%s): refusing (fail_closed)", operation, exc)
                return None
            log.warning("%s state unavailable (%s): per-process state (fail_open)", operation, exc)
            try:
                decision = await call(self._fallback)
            except StateUnavailable as full:  # the per-process replay set is full: refuse, never forget
                log.warning("%s per-process state unavailable (%s): refusing", operation, full)
                return None
            if decision.allowed:
                exc.keep()  # forwarded after all: whatever the lost Redis answer recorded must stay
            return decision

    async def take(self, limits: Sequence[Limit], keys: Sequence[str], stage: str) -> Rejection | None:
        """All the limits for one request in one state call; the first refusing one answers."""
        cells = [limit.cell(key) for limit, key in zip(limits, keys, strict=True)]
        decision = await self._decide("rate_limit", lambda state: state.take(cells))
        if decision is None:
            return Rejection(Reason.STATE_UNAVAILABLE, stage, retry_after=1.0)
        self._count(limits, decision)
        if decision.allowed:
            return None
        return Rejection(limits[decision.refused].reason, stage, retry_after=max(decision.retry_after, 1.0))

    async def admit(
        self, jti: str, ttl: float, quota: Sequence[Limit], owner: str, stage: str
    ) -> Decision | Rejection:
        """The replay check on (`owner`, `jti`) and the `quota` limits of `owner`, in one state call.

        A Rejection when the state cannot answer (fail_closed); otherwise the decision, with the
        quota counted unless the key was a replay (a replay spends no quota)."""
        cell = quota[0].cell(owner) if quota else None
        decision = await self._decide("admission", lambda state: state.admit(owner, jti, ttl, cell))
        if decision is None:
            return Rejection(Reason.STATE_UNAVAILABLE, stage, retry_after=1.0)
        if not decision.replayed:
            self._count(quota, decision)
        return decision


class RequestLimits:
    """Stage request_limits: the caller's address (X-Forwarded-For only from trusted proxies) and all traffic
    together, decided in one state call."""

    stage = "request_limits"
    waits = True

    def __init__(
        self, limiter: Limiter, per_ip: Bucket | None, global_: Bucket | None, ipv6_prefix: int = 64
    ) -> None:
        self.limiter = limiter
        self.ipv6_prefix = ipv6_prefix
        self.limits: list[Limit] = []
        if per_ip is not None:
            self.limits.append(Limit("per_ip", per_ip, Reason.RATE_LIMITED_IP))
        if global_ is not None:
            self.limits.append(Limit("global", global_, Reason.RATE_LIMITED_GLOBAL))

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        address = address_key(ctx.client_address, self.ipv6_prefix)
        keys = [address if limit.name == "per_ip" else "all" for limit in self.limits]
        return await self.limiter.take(self.limits, keys, self.stage)


def address_key(address: str, ipv6_prefix: int) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /`ipv6_prefix` network (one
    subscriber usually holds a whole /64: keyed per /128 it would get 2^64 allowances)."""
    if ":" not in address:
        return address
    try:
        return str(ip_network(f"{address}/{ipv6_prefix}", strict=False))
    except ValueError:
        return address


class IssuerGuard:
    """Stage per_issuer_unverified: a generous per-issuer budget before the signature is checked (a CPU guard).

    Keyed by the claimed `iss` (configured or not: an unknown issuer gets the same limit and the
    same 429, so the answer tells nothing about which client ids exist) and the caller's address
    (IPv6: its prefix), so a forger elsewhere cannot spend a real client's allowance. The `iss` is
    hashed: any string can arrive here, the key stays short. Verified traffic has its own quota.
    """

    stage = "per_issuer_unverified"
    waits = True

    def __init__(self, limiter: Limiter, bucket: Bucket, ipv6_prefix: int = 64) -> None:
        self.limiter = limiter
        self.ipv6_prefix = ipv6_prefix
        self.limits = [Limit("per_issuer_unverified", bucket, Reason.RATE_LIMITED_ISSUER)]

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None
        iss = str(ctx.jws.payload.get("iss", ""))
        digest = blake2b(iss.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
        key = f"{digest}:{address_key(ctx.client_address, self.ipv6_prefix)}"
        return await self.limiter.take(self.limits, [key], self.stage)
