"""Property tests of the claim rules (stage claims): a sound assertion passes; any JSON value in any
claim gives an answer (never an exception); dates outside ±2^53 or not finite are claim_invalid;
a subject or jti with anything around it is refused."""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks.claims import Claims
from gateway.checks.context import RequestContext
from gateway.config.model import Limits, Profile
from gateway.errors import Reason, Rejection
from gateway.jose.jws import CompactJWS

AUD = "https://gateway.test/oauth2/token"
CLAIMS = Claims(Profile(audiences=(AUD,)), Limits())
NOW = 1_900_000_000.0


def check(claims: dict[str, Any]) -> Rejection | None:
    ctx = RequestContext(authorization=None, form={}, client_address="-", received_at=NOW)
    ctx.jws = CompactJWS({"alg": "ES256"}, claims, b"", b"x")
    return CLAIMS(ctx)  # a check that never waits answers at once


def sound(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": "acme", "sub": "tel:+34600000001", "aud": AUD, "iat": int(NOW) - 10, "exp": int(NOW) + 100,
              "jti": "j-1", "scope": "sim-swap:check"}
    claims.update(overrides)
    return claims


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
                | st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300)))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
subjects = st.from_regex(r"tel:\+[1-9][0-9]{3,14}", fullmatch=True) | st.from_regex(
    r"operatortoken:[!-~]{1,40}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(subjects, st.integers(0, 280), st.integers(1, 290), st.from_regex(r"[!-~]{1,64}", fullmatch=True))
def test_sound_assertions_pass(sub: str, age: int, lifetime: int, jti: str):
    iat = int(NOW) - min(age, lifetime - 1) if lifetime > 1 else int(NOW)
    exp = iat + lifetime
    if exp <= NOW:
        exp = int(NOW) + 1
    assert check(sound(sub=sub, iat=iat, exp=exp, jti=jti)) is None


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["exp", "iat", "nbf", "aud", "sub", "jti", "scope", "iss"]), json_values)
def test_any_value_in_any_claim_is_an_answer(name: str, value: Any):
    result = check(sound(**{name: value}))
    assert result is None or isinstance(result, Rejection)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["exp", "iat", "nbf"]),
       st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not math.isfinite(v) or abs(v) >= 2**53)
       | st.integers(min_value=2**53) | st.integers(max_value=-(2**53)))
def test_dates_out_of_range_are_claim_invalid(name: str, value: float | int):
    result = check(sound(**{name: value}))
    assert result is not None and result.reason is Reason.CLAIM_INVALID


@settings(max_examples=300, deadline=None)
@given(subjects, st.sampled_from(["\n", " ", "\t", "\r\n", "\x00", "\u2028"]), st.booleans())
def test_subject_with_anything_around_it_is_refused(sub: str, extra: str, before: bool):
    result = check(sound(sub=extra + sub if before else sub + extra))
    assert result is not None and result.reason is Reason.SUBJECT_FORMAT


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[!-~]{1,40}", fullmatch=True), st.sampled_from(["\n", " ", "\x7f", "é"]))
def test_jti_outside_printable_ascii_is_refused(jti: str, extra: str):
    result = check(sound(jti=jti + extra))
    assert result is not None and result.reason is Reason.JTI_INVALID


def test_the_clock_is_the_received_time():
    # exp just past received_at + skew 0: expired, whatever the wall clock says now.
    assert check(sound(exp=int(NOW) - 1, iat=int(NOW) - 20)).reason is Reason.EXPIRED  # type: ignore[union-attr]
    assert time.time() < NOW  # the fixed reference is in the future of any CI run
