"""Compact JWS parsing: every rejection rule of gateway.jose.jws, and the round trip."""

from __future__ import annotations

import json

import pytest

from gateway.jose.jws import CompactJWS, JWSFormatError, b64url_encode, parse_compact
from gateway.jose.signing import generate_private_key_pem, load_signing_key

CAPS = {"max_header_bytes": 1024, "max_payload_bytes": 4096}
HEADER = b64url_encode(b'{"alg":"ES256","kid":"16"}')
PAYLOAD = b64url_encode(b'{"iss":"acme","jti":"1"}')
SIG = b64url_encode(b"\x01" * 64)


def token(header: bytes | str = HEADER, payload: bytes | str = PAYLOAD, sig: str = SIG) -> str:
    """A compact JWS from raw JSON bytes (encoded here) or ready-made segments."""
    h = b64url_encode(header) if isinstance(header, bytes) else header
    p = b64url_encode(payload) if isinstance(payload, bytes) else payload
    return f"{h}.{p}.{sig}"


def token_with(which: str, segment: bytes | str) -> str:
    """A token whose header or payload is `segment`."""
    return token(header=segment) if which == "header" else token(payload=segment)


def reason(value: str, **caps: int) -> str:
    with pytest.raises(JWSFormatError) as info:
        parse_compact(value, **{**CAPS, **caps})
    assert str(info.value) == info.value.reason
    return info.value.reason


def test_round_trip_with_a_real_signature() -> None:
    key = load_signing_key(generate_private_key_pem("ES256"), alg="ES256", kid="16", source="t")
    claims = {"iss": "acme", "sub": "tel:+34600000000", "nested": {"a": [1, 2.5, None, True]}}
    value = key.sign(claims)
    jws = parse_compact(value, **CAPS)
    assert isinstance(jws, CompactJWS)
    assert jws.header == {"alg": "ES256", "kid": "16", "typ": "JWT"}
    assert jws.payload == claims
    assert jws.signing_input == value.rsplit(".", 1)[0].encode("ascii")
    assert len(jws.signature) == 64
    assert key.verification_key().verify(jws.signing_input, jws.signature)


def test_b64url_encode_has_no_padding_and_url_alphabet() -> None:
    assert b64url_encode(b"") == ""
    assert b64url_encode(b"\xfb\xff") == "-_8"
    assert b64url_encode(b"a") == "YQ"
    assert b64url_encode(b"ab") == "YWI"


@pytest.mark.parametrize(
    "value",
    [
        "",
        HEADER,
        f"{HEADER}.{PAYLOAD}",
        f"{HEADER}.{PAYLOAD}.{SIG}.{SIG}",
        f".{PAYLOAD}.{SIG}",
        f"{HEADER}..{SIG}",
        f"{HEADER}.{PAYLOAD}.",
        "..",
        f"{HEADER}.{PAYLOAD}.{SIG}=",  # padding
        f"{HEADER}=.{PAYLOAD}.{SIG}",
        f"{HEADER}.{PAYLOAD}.{SIG}\n",  # trailing newline ($ would let it through)
        f" {HEADER}.{PAYLOAD}.{SIG}",
        f"{HEADER}.{PAYLOAD[:4]} {PAYLOAD[4:]}.{SIG}",
        f"{HEADER}.{PAYLOAD}.{SIG[:-1]}é",  # non-ASCII
        f"{HEADER}.{PAYLOAD}.{SIG[:-1]}\uff21",  # fullwidth 'A', str.isalnum() is True
        f"{HEADER}.{PAYLOAD}.{SIG[:4]}+/{SIG[6:]}",  # standard, not URL, alphabet
        f"{HEADER}.{PAYLOAD}.A",  # length 1 mod 4 cannot be base64
        f"{HEADER}.{PAYLOAD}.AAAAA",
        f"{HEADER}.{PAYLOAD}.QR",  # non-canonical: unused bits set (canonical is QQ)
        f"{HEADER}.{PAYLOAD}.QUF",  # non-canonical: unused bits set (canonical is QUE)
    ],
)
def test_malformed_shapes(value: str) -> None:
    assert reason(value) == "jwt_malformed"


def test_canonical_short_segments_are_accepted() -> None:
    assert parse_compact(token(sig="QQ"), **CAPS).signature == b"A"
    assert parse_compact(token(sig="QUE"), **CAPS).signature == b"AA"


def test_non_canonical_header_segment_is_malformed() -> None:
    header = b64url_encode(b'{"a":1}')  # 7 bytes -> 10 chars, last carries 2 unused bits
    assert len(header) % 4 == 2
    bumped = header[:-1] + chr(ord(header[-1]) + 1)
    assert reason(token(header=bumped)) == "jwt_malformed"


@pytest.mark.parametrize("which", ["header", "payload"])
def test_size_caps_at_the_boundary(which: str) -> None:
    cap = 40
    filler = cap - len(b'{"x":""}')
    exact = b'{"x":"' + b"a" * filler + b'"}'
    over = b'{"x":"' + b"a" * (filler + 1) + b'"}'
    assert len(exact) == cap
    caps = {f"max_{which}_bytes": cap}
    parse_compact(token_with(which, exact), **{**CAPS, **caps})
    assert reason(token_with(which, over), **caps) == f"jwt_{which}_too_large"


@pytest.mark.parametrize("which", ["header", "payload"])
def test_size_cap_is_checked_before_decoding(which: str) -> None:
    # Oversized AND undecodable (length 1 mod 4): the cap answers, so nothing was decoded.
    segment = "A" * 4001
    caps = {"max_header_bytes": 100, "max_payload_bytes": 100}
    assert reason(token_with(which, segment), **caps) == f"jwt_{which}_too_large"


def test_encoded_cap_is_ceil_of_four_thirds() -> None:
    # 10 decoded bytes -> 14 chars; a 15-char segment is over the cap before decoding.
    ok = b64url_encode(b'{"a":"12"}')
    assert len(ok) == 14
    parse_compact(token(header=ok), max_header_bytes=10, max_payload_bytes=4096)
    assert reason(token(header=ok + "A"), max_header_bytes=10) == "jwt_header_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"ES256"',  # truncated
        b"not json",
        b'{"a":1}x',  # trailing data
        b'{"a":1}{"b":2}',
        b" ",  # whitespace only: no JSON value
        b'{"a":"\xff"}',  # invalid UTF-8
        b'{"a":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'\xef\xbb\xbf{"a":1}',  # BOM
        '{"a":1}'.encode("utf-16"),  # json.loads(bytes) would accept this
        '{"a":1}'.encode("utf-32-le"),
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b"{'a':1}",
        b'{"a":1,}',
        b'{"a":"x\x01"}',  # raw control character in a string
    ],
)
@pytest.mark.parametrize("which", ["header", "payload"])
def test_malformed_json(raw: bytes, which: str) -> None:
    assert reason(token_with(which, raw)) == "jwt_malformed"


@pytest.mark.parametrize("raw", [b"[]", b"[1,2]", b'"s"', b"1", b"null", b"true", b"1.5"])
@pytest.mark.parametrize("which", ["header", "payload"])
def test_json_that_is_not_an_object(raw: bytes, which: str) -> None:
    assert reason(token_with(which, raw)) == "jwt_not_object"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"ES256","alg":"none"}',
        b'{"a":1,"b":{"c":1,"c":2}}',  # nested object
        b'{"a":[{"x":1},{"y":1,"y":1}]}',  # object inside an array
        b'[{"x":1,"x":2}]',  # found while parsing, before the top-level check
    ],
)
@pytest.mark.parametrize("which", ["header", "payload"])
def test_duplicate_keys_anywhere(raw: bytes, which: str) -> None:
    assert reason(token_with(which, raw)) == "jwt_duplicate_key"


def test_same_key_in_different_objects_is_fine() -> None:
    jws = parse_compact(token(payload=b'{"a":{"k":1},"b":{"k":2}}'), **CAPS)
    assert jws.payload == {"a": {"k": 1}, "b": {"k": 2}}


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    raw = b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert reason(token(payload=raw), max_payload_bytes=200_000) == "jwt_malformed"


def test_huge_integer_is_malformed_not_a_crash() -> None:
    raw = b'{"exp":' + b"9" * 5000 + b"}"  # beyond Python's int digit limit
    assert reason(token(payload=raw), max_payload_bytes=10_000) == "jwt_malformed"


def test_unicode_in_json_is_kept() -> None:
    jws = parse_compact(token(payload=json.dumps({"n": "Zoë ☃"}).encode()), **CAPS)
    assert jws.payload == {"n": "Zoë ☃"}
    jws = parse_compact(token(payload='{"n":"Zoë"}'.encode()), **CAPS)
    assert jws.payload == {"n": "Zoë"}


def test_signature_is_decoded() -> None:
    jws = parse_compact(token(sig=b64url_encode(b"\x00\xff" * 10)), **CAPS)
    assert jws.signature == b"\x00\xff" * 10
