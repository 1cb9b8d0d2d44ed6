"""Stage assertion_shape: the assertion is a compact JWS of bounded size whose header and payload are JSON objects."""

from __future__ import annotations

from gateway.checks.context import RequestContext
from gateway.config.model import Limits
from gateway.errors import Reason, Rejection
from gateway.jose.jws import JWSFormatError, parse_compact

_REASONS = {
    "jwt_malformed": Reason.JWT_MALFORMED,
    "jwt_header_too_large": Reason.JWT_HEADER_TOO_LARGE,
    "jwt_payload_too_large": Reason.JWT_PAYLOAD_TOO_LARGE,
    "jwt_duplicate_key": Reason.JWT_DUPLICATE_KEY,
    "jwt_not_object": Reason.JWT_NOT_OBJECT,
}


class AssertionShape:
    stage = "assertion_shape"
    waits = False

    def __init__(self, limits: Limits) -> None:
        self.max_assertion_bytes = limits.max_assertion_bytes
        self.max_header_bytes = limits.max_jwt_header_bytes
        self.max_payload_bytes = limits.max_jwt_payload_bytes

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        assertion = ctx.form["assertion"]
        if len(assertion) > self.max_assertion_bytes:
            return Rejection(Reason.ASSERTION_TOO_LARGE, self.stage)
        try:
            ctx.jws = parse_compact(
                assertion, max_header_bytes=self.max_header_bytes, max_payload_bytes=self.max_payload_bytes
            )
        except JWSFormatError as exc:
            return Rejection(_REASONS.get(exc.reason, Reason.JWT_MALFORMED), self.stage)
        return None
