"""The order of the jwt-bearer checks lives here and only here (README: How a request travels)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from gateway.checks.admission import ClientAdmission, UpstreamGuard
from gateway.checks.assertion_shape import AssertionShape
from gateway.checks.claims import Claims
from gateway.checks.context import Check, RequestContext
from gateway.checks.header_policy import HeaderPolicy
from gateway.checks.incoming_auth import ClientAuthConflict
from gateway.checks.issuer import Issuer
from gateway.checks.rate_limits import IssuerGuard, Limiter, RequestLimits
from gateway.checks.request_rules import RequestRules
from gateway.checks.signature import ClientGrant, Signature
from gateway.config.model import GatewayConfig
from gateway.errors import Rejection
from gateway.metrics import metrics

if TYPE_CHECKING:
    from gateway.clients import ClientRuntime


def request_limits(config: GatewayConfig, limiter: Limiter) -> tuple[Check, ...]:
    """Stage request_limits, shared by the jwt-bearer pipeline and forwarded grants: per-IP and global, one call."""
    limits = config.rate_limits
    if limits.per_ip is None and limits.global_ is None:
        return ()
    return (RequestLimits(limiter, limits.per_ip, limits.global_, limits.ipv6_prefix),)


def build_pipeline(
    config: GatewayConfig, clients: Mapping[str, ClientRuntime], limiter: Limiter
) -> tuple[Check, ...]:
    """Cheapest first; a check never calls the next one. Each check's `stage` names it in the audit
    log and in the stage_duration metric.

    Two deliberate choices in the order:
    - `claims` runs before `issuer`: a bad-claims assertion then gets the same answer whether or
      not its `iss` names a client, so the error code is no oracle of which client ids exist.
    - `client_admission` is the replay check and the client quota in one atomic state call: a
      replay spends no quota, and an assertion refused with 429 has not been spent and can be retried.
    """
    profile = config.profile
    limits = config.rate_limits
    guard: tuple[Check, ...] = ()
    if limits.per_issuer_unverified is not None:
        guard = (IssuerGuard(limiter, limits.per_issuer_unverified, limits.ipv6_prefix),)
    return (
        *request_limits(config, limiter),
        ClientAuthConflict(profile.incoming_client_auth),
        RequestRules(profile.forbid_scope_parameter),
        AssertionShape(config.limits),
        HeaderPolicy(profile, config.limits),
        Claims(profile, config.limits),
        Issuer(clients),
        *guard,  # per_issuer_unverified: the pre-verification CPU guard
        Signature(),
        ClientGrant(),  # unauthorized_client, only for a proven client
        UpstreamGuard(),  # upstream_guard's local checks, before the jti is spent
        ClientAdmission(limiter, limits.per_client, profile.clock_skew, profile.replay),  # replay, then quota
    )


async def run_checks(checks: Sequence[Check], ctx: RequestContext) -> Rejection | None:
    """The one check loop (jwt-bearer pipeline and forwarded grants): the first Rejection stops it;
    each check's time goes to stage_duration under its stage name."""
    m = metrics()
    timer = m.stage_duration
    clock = time.perf_counter
    for check in checks:
        started = clock()
        verdict = check(ctx)
        rejection = cast("Rejection | None", await verdict if check.waits else verdict)  # type: ignore[misc]
        m.observe(m.child(timer, check.stage), clock() - started)
        if rejection is not None:
            return rejection
    return None
