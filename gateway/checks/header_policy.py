"""Stage header_policy: the JOSE header: algorithm allow-list, no key-carrying or critical headers, a sane kid."""

from __future__ import annotations

import re

from gateway.checks.context import RequestContext
from gateway.config.model import Limits, Profile
from gateway.errors import Reason, Rejection
from gateway.jose.keys import ALGORITHMS

# RFC 8725 §3.10 / RFC 7515 §4.1: headers that would make the verifier fetch or trust a key the
# sender chose (jku/x5u are also SSRF vectors); `enc`/`zip` belong to JWE, not to a signed assertion.
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "enc", "zip"})
# RFC 8725 §3.10: kid is attacker input; no path, quote or control characters reach a key lookup.
# Applied with fullmatch (`$` would let a trailing newline through).
KID_PATTERN = re.compile(r"[A-Za-z0-9._:+=-]+")
# RFC 8725 §3.11-3.12: if typed at all, the assertion must say it is a plain JWT, not another kind.
_ACCEPTED_TYP = frozenset({"jwt", "application/jwt"})


class HeaderPolicy:
    stage = "header_policy"
    waits = False

    def __init__(self, profile: Profile, limits: Limits) -> None:
        # The global allow-list can only narrow ALGORITHMS: none and HS* are impossible by construction.
        self.algorithms = frozenset(profile.algorithms) & ALGORITHMS
        self.max_kid_length = limits.max_kid_length

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None
        header = ctx.jws.header
        alg = header.get("alg")
        # RFC 8725 §3.1-3.2: only allow-listed asymmetric algorithms; exact, case-sensitive match.
        if not isinstance(alg, str) or alg not in self.algorithms:
            return Rejection(Reason.ALG_FORBIDDEN, self.stage)
        if not FORBIDDEN_HEADERS.isdisjoint(header):
            return Rejection(Reason.HEADER_FORBIDDEN, self.stage)
        # RFC 7515 §4.1.11: the gateway understands no extension, so any crit must be refused.
        if "crit" in header or "b64" in header:
            return Rejection(Reason.CRIT_UNSUPPORTED, self.stage)
        kid = header.get("kid")
        if kid is not None and (
            not isinstance(kid, str) or len(kid) > self.max_kid_length or not KID_PATTERN.fullmatch(kid) or ".." in kid
        ):
            return Rejection(Reason.KID_INVALID, self.stage)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            return Rejection(Reason.TYP_INVALID, self.stage)
        return None
