"""Stage claims: the CAMARA assertion profile's claim rules (RFC 7523 §3, CAMARA SI)."""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

from gateway.checks.context import RequestContext
from gateway.config.model import Limits, Profile
from gateway.errors import Reason, Rejection

# CAMARA SI "Format of login_hint": tel: + E.164 without separators (ITU-T E.164: at most 15 digits),
# or operatortoken:<opaque>; ipport: is a login_hint format only and is not accepted here.
# Always applied with fullmatch: `$` alone would accept a trailing newline.
SUBJECT_PATTERNS: dict[str, re.Pattern[str]] = {
    "tel": re.compile(r"tel:\+[1-9][0-9]{3,14}"),
    "operatortoken": re.compile(r"operatortoken:[!-~]{1,1024}"),
}
_JTI = re.compile(r"[!-~]+")
# NumericDates beyond 2^53 seconds are not dates (and a float cannot hold every integer past it);
# bounding them keeps every comparison below in exact, overflow-free float arithmetic.
_MAX_NUMERIC_DATE = 2**53


def _is_number(value: Any) -> TypeGuard[int | float]:
    """RFC 7519 §2 NumericDate: a finite JSON number within ±2^53 (booleans are ints in Python: no)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_MAX_NUMERIC_DATE < value < _MAX_NUMERIC_DATE
    return isinstance(value, float) and math.isfinite(value) and -_MAX_NUMERIC_DATE < value < _MAX_NUMERIC_DATE


class Claims:
    stage = "claims"
    waits = False

    def __init__(self, profile: Profile, limits: Limits) -> None:
        self.audiences = frozenset(profile.audiences)
        self.max_lifetime = profile.max_lifetime
        self.skew = profile.clock_skew
        self.required = tuple(profile.required_claims)
        self.subject_patterns = tuple(SUBJECT_PATTERNS[name] for name in profile.subject_formats)
        self.max_jti_length = limits.max_jti_length
        self.jti_needed = profile.replay == "jti"

    def _reject(self, reason: Reason) -> Rejection:
        return Rejection(reason, self.stage)

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        claims = ctx.claims
        now = ctx.received_at
        skew = self.skew
        for name in self.required:
            if name not in claims:
                return self._reject(Reason.JTI_MISSING if name == "jti" else Reason.CLAIM_MISSING)

        exp = claims.get("exp")
        if not _is_number(exp):
            return self._reject(Reason.CLAIM_INVALID)
        # RFC 7523 §3 item 4: reject an expired assertion; CAMARA SI: and one valid for more than 300 s.
        if now > exp + skew:
            return self._reject(Reason.EXPIRED)
        if exp > now + self.max_lifetime + skew:
            return self._reject(Reason.EXP_TOO_FAR)
        iat = claims.get("iat")
        if iat is not None:
            if not _is_number(iat):
                return self._reject(Reason.CLAIM_INVALID)
            # CAMARA SI: reject when iat is after receipt, or when exp - iat exceeds 300 s.
            if iat > now + skew:
                return self._reject(Reason.IAT_IN_FUTURE)
            if exp - iat > self.max_lifetime or exp <= iat:
                return self._reject(Reason.LIFETIME_TOO_LONG)
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                return self._reject(Reason.CLAIM_INVALID)
            # RFC 7523 §3 item 5.
            if nbf > now + skew:
                return self._reject(Reason.NOT_YET_VALID)

        # RFC 7523 §3 item 3 and CAMARA SI: aud is the endpoint URL, compared as a simple string;
        # one audience only (a list of one is the same thing, a list of two is not).
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud not in self.audiences:
            return self._reject(Reason.AUDIENCE_MISMATCH)

        if "sub" in claims or "sub" in self.required:
            sub = claims.get("sub")
            if not isinstance(sub, str) or not any(p.fullmatch(sub) for p in self.subject_patterns):
                return self._reject(Reason.SUBJECT_FORMAT)

        # RFC 7523 §3 item 7: jti makes the replay set possible; bounded and printable. Optional (when
        # present, the same rules) unless the replay policy is jti.
        jti = claims.get("jti")
        if (jti is not None or self.jti_needed) and (
            not isinstance(jti, str) or not (0 < len(jti) <= self.max_jti_length) or not _JTI.fullmatch(jti)
        ):
            return self._reject(Reason.JTI_INVALID)

        scope = claims.get("scope")
        if scope is not None and (not isinstance(scope, str) or not scope.strip()):
            return self._reject(Reason.CLAIM_INVALID)
        if not isinstance(claims.get("iss"), str):
            return self._reject(Reason.CLAIM_INVALID)
        return None
