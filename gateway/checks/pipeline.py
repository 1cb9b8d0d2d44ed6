"""The order of the jwt-bearer checks lives here and only here (design: Request flow)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.checks.assertion_shape import AssertionShape
from gateway.checks.claims import Claims
from gateway.checks.client_auth import ClientAuthConflict
from gateway.checks.context import Check
from gateway.checks.header_policy import HeaderPolicy
from gateway.checks.issuer import Issuer
from gateway.checks.replay import Replay
from gateway.checks.request_rules import RequestRules
from gateway.checks.signature import ClientGrant, Signature
from gateway.config.model import GatewayConfig
from gateway.state.base import StateBackend

if TYPE_CHECKING:
    from gateway.runtime import ClientRuntime


def build_pipeline(
    config: GatewayConfig, clients: Mapping[str, ClientRuntime], state: StateBackend
) -> tuple[Check, ...]:
    """Cheapest first. Rate limits (stages 5, 10's per-issuer guard, 14) slot in where marked.

    Claims run before the issuer lookup (design stages 11 and 10 swapped): a bad-claims assertion
    then gets the same answer whether or not its `iss` names a client, so the error code is no
    oracle of which client ids exist.
    """
    profile = config.profile
    return (
        # 5: per-IP limit (rate-limit issue)
        ClientAuthConflict(profile.incoming_client_auth),  # 6
        RequestRules(profile.forbid_scope_parameter),  # 7
        AssertionShape(config.limits),  # 8
        HeaderPolicy(profile, config.limits),  # 9
        Claims(profile, config.limits),  # 11
        Issuer(clients),  # 10 (+ the pre-verification per-issuer limit, rate-limit issue)
        Signature(),  # 12
        ClientGrant(),  # 12b: unauthorized_client, only for a proven client
        Replay(state, profile.clock_skew, config.state.redis.on_error),  # 13
        # 14: per-client quota (rate-limit issue)
    )
