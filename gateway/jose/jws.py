"""Strict parsing of compact JWS (RFC 7515 §7.1) for untrusted assertions."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from gateway.jose.precheck import COMPILED

__all__ = ["CompactJWS", "JWSFormatError", "b64url_encode", "parse_compact"]

# RFC 7515 §2 + §7.1: three base64url segments without padding; one precompiled pattern
# checks the segment count and the alphabet (no '=', whitespace or non-ASCII) in one pass.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")

# RFC 4648 §3.5: the unused low bits of the last character must be zero. Python's decoder
# ignores them, so without this check several spellings decode to the same bytes.
_CANONICAL_LAST = {
    2: frozenset("AQgw"),  # 1 byte in 2 chars: 4 unused bits
    3: frozenset("AEIMQUYcgkosw048"),  # 2 bytes in 3 chars: 2 unused bits
}
_TO_STD_ALPHABET = bytes.maketrans(b"-_", b"+/")


class JWSFormatError(Exception):
    """A token that is not a well-formed compact JWS; `reason` is the reason code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A parsed but unverified compact JWS."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes  # RFC 7515 §5.2: ASCII(BASE64URL(header) || '.' || BASE64URL(payload))
    signature: bytes


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §4 / RFC 7519 §4: reject duplicate member names, otherwise two parsers
    # (ours and the AS's) can read different headers or claims from one token.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


def _reject_constant(name: str) -> NoReturn:
    # RFC 8259 §6: NaN and Infinity are not JSON.
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    # The segment already matched the base64url alphabet; only length and trailing bits
    # remain to be checked for a strict, canonical decode.
    rem = len(segment) % 4
    if rem == 1:
        raise JWSFormatError("jwt_malformed")
    if rem and segment[-1] not in _CANONICAL_LAST[rem]:
        raise JWSFormatError("jwt_malformed")
    raw = segment.encode("ascii").translate(_TO_STD_ALPHABET) + b"=" * (-len(segment) % 4)
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        raise JWSFormatError("jwt_malformed") from None


def _decode_json_object(segment: str, max_bytes: int, too_large: str) -> dict[str, Any]:
    # Cap on the encoded length first, so an oversized segment is never decoded.
    if len(segment) > (4 * max_bytes + 2) // 3:
        raise JWSFormatError(too_large)
    raw = _b64url_decode(segment)
    if len(raw) > max_bytes:
        raise JWSFormatError(too_large)
    try:
        # RFC 7515 §5.2 step 3 / RFC 7519 §7.2 step 10: UTF-8 JSON; json.loads(bytes)
        # would also accept UTF-16/32, so decode strictly as UTF-8 first.
        value = _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKey:
        raise JWSFormatError("jwt_duplicate_key") from None
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int digit limits;
        # RecursionError a deeply nested value. Malformed input must never be a 5xx.
        raise JWSFormatError("jwt_malformed") from None
    if type(value) is not dict:
        # RFC 7519 §7.2 step 10 (claims) and RFC 7515 §4 (header): JSON objects only.
        raise JWSFormatError("jwt_not_object")
    return value


def parse_compact(token: str, *, max_header_bytes: int, max_payload_bytes: int) -> CompactJWS:
    """Split and decode a compact JWS; raise JWSFormatError with a reason code."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JWSFormatError("jwt_malformed")
    header_b64, payload_b64, signature_b64 = match.groups()
    header = _decode_json_object(header_b64, max_header_bytes, "jwt_header_too_large")
    payload = _decode_json_object(payload_b64, max_payload_bytes, "jwt_payload_too_large")
    signature = _b64url_decode(signature_b64)
    if not signature:
        raise JWSFormatError("jwt_malformed")
    signing_input = token[: match.end(2)].encode("ascii")
    return CompactJWS(header, payload, signing_input, signature)


# The compiled parser (gateway/_precheck.pyx) when built, raising the same JWSFormatError and returning the
# same CompactJWS; the pure one above otherwise (gateway/jose/precheck.py chooses; `parse_compact_pure`
# stays importable for the differential test).
parse_compact_pure = parse_compact
if COMPILED is not None:
    COMPILED.bind_jws(parse_compact_pure, CompactJWS, JWSFormatError)
    parse_compact = COMPILED.parse_compact
