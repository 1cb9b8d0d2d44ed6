"""Property tests of the compact-JWS parser (stage assertion_shape): canonical input reads back
exactly; any other text is a JWSFormatError with a known reason, never another exception."""

from __future__ import annotations

import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.jose.jws import JWSFormatError, b64url_encode, parse_compact

REASONS = {"jwt_malformed", "jwt_header_too_large", "jwt_payload_too_large", "jwt_duplicate_key", "jwt_not_object"}
LIMITS = {"max_header_bytes": 1024, "max_payload_bytes": 2048}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def segment(document: object) -> str:
    return b64url_encode(json.dumps(document).encode())


@settings(max_examples=100, deadline=None)
@given(objects, objects, st.binary(min_size=1, max_size=128))
def test_canonical_tokens_read_back_exactly(header: dict, payload: dict, signature: bytes):
    token = f"{segment(header)}.{segment(payload)}.{b64url_encode(signature)}"
    assume(len(json.dumps(header)) <= 1024 and len(json.dumps(payload)) <= 2048)
    jws = parse_compact(token, **LIMITS)
    assert (jws.header, jws.payload, jws.signature) == (header, payload, signature)
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400) | st.from_regex(r"[A-Za-z0-9_=.\n -]{0,200}", fullmatch=True))
def test_any_text_parses_or_fails_with_a_reason(token: str):
    try:
        parse_compact(token, **LIMITS)
    except JWSFormatError as exc:
        assert exc.reason in REASONS


@settings(max_examples=60, deadline=None)
@given(objects, st.binary(min_size=1, max_size=64), st.sampled_from(["\n", " ", "=", "\r\n"]))
def test_trailing_whitespace_or_padding_is_malformed(payload: dict, signature: bytes, tail: str):
    token = f"{segment({'alg': 'ES256'})}.{segment(payload)}.{b64url_encode(signature)}{tail}"
    try:
        parse_compact(token, **LIMITS)
    except JWSFormatError as exc:
        assert exc.reason == "jwt_malformed"
    else:
        raise AssertionError("accepted")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: len(b) % 3 != 0))
def test_non_canonical_base64url_is_malformed(signature: bytes):
    # The unused low bits of the last character must be zero (RFC 4648 §3.5): set one.
    encoded = b64url_encode(signature)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = encoded[:-1] + alphabet[alphabet.index(encoded[-1]) | 1]
    token = f"{segment({'alg': 'ES256'})}.{segment({'iss': 'a'})}.{tweaked}"
    try:
        parse_compact(token, **LIMITS)
    except JWSFormatError as exc:
        assert exc.reason == "jwt_malformed"
    else:
        raise AssertionError("accepted a non-canonical encoding")


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=8), json_values, json_values)
def test_duplicate_member_names_are_refused(name: str, first: object, second: object):
    payload = "{" + f"{json.dumps(name)}:{json.dumps(first)},{json.dumps(name)}:{json.dumps(second)}" + "}"
    token = f"{segment({'alg': 'ES256'})}.{b64url_encode(payload.encode())}.{b64url_encode(b'sig')}"
    try:
        parse_compact(token, **LIMITS)
    except JWSFormatError as exc:
        assert exc.reason == "jwt_duplicate_key"
    else:
        raise AssertionError("accepted duplicate member names")
