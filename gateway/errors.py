"""Errors are values: a reason code, mapped to HTTP in one place (README: Error semantics)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from aiohttp import web


class Row(enum.Enum):
    """A row of the error table; the profile decides its status and error code."""

    BODY_TOO_LARGE = "body_too_large"
    INVALID_REQUEST = "invalid_request"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    UNSUPPORTED_GRANT = "unsupported_grant_type"
    MALFORMED_ASSERTION = "malformed_assertion"
    CLIENT_IDENTIFICATION = "client_identification"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    INVALID_GRANT = "invalid_grant"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_REJECTED_CREDENTIALS = "upstream_rejected_credentials"
    INTERNAL = "internal"


class Reason(enum.Enum):
    """Fixed reason codes: audit log and metric labels use `.value`; callers only see the row."""

    # request level: stages connection, route, size, form, dispatch (server/)
    HEADERS_TOO_LARGE = ("headers_too_large", Row.HEADERS_TOO_LARGE)
    BODY_READ_TIMEOUT = ("body_read_timeout", Row.REQUEST_TIMEOUT)
    METHOD_NOT_ALLOWED = ("method_not_allowed", Row.METHOD_NOT_ALLOWED)
    PATH_DENIED = ("path_denied", Row.NOT_FOUND)
    CONTENT_TYPE = ("content_type", Row.INVALID_REQUEST)
    CONTENT_ENCODING = ("content_encoding", Row.INVALID_REQUEST)
    BODY_TOO_LARGE = ("body_too_large", Row.BODY_TOO_LARGE)
    FORM_MALFORMED = ("form_malformed", Row.INVALID_REQUEST)
    TOO_MANY_PARAMETERS = ("too_many_parameters", Row.INVALID_REQUEST)
    REPEATED_PARAMETER = ("repeated_parameter", Row.INVALID_REQUEST)
    GRANT_TYPE_MISSING = ("grant_type_missing", Row.INVALID_REQUEST)
    GRANT_TYPE_DENIED = ("grant_type_denied", Row.UNSUPPORTED_GRANT)
    OVERLOADED = ("overloaded", Row.UPSTREAM_UNAVAILABLE)
    # the jwt-bearer checks, in the order of checks/pipeline.py
    RATE_LIMITED_IP = ("rate_limited_ip", Row.RATE_LIMITED)
    RATE_LIMITED_GLOBAL = ("rate_limited_global", Row.RATE_LIMITED)
    RATE_LIMITED_ISSUER = ("rate_limited_issuer", Row.RATE_LIMITED)
    CLIENT_QUOTA_EXCEEDED = ("client_quota_exceeded", Row.RATE_LIMITED)
    CLIENT_AUTH_CONFLICT = ("client_auth_conflict", Row.INVALID_REQUEST)
    ASSERTION_MISSING = ("assertion_missing", Row.INVALID_REQUEST)
    SCOPE_PARAMETER = ("scope_parameter", Row.INVALID_REQUEST)
    ASSERTION_TOO_LARGE = ("assertion_too_large", Row.MALFORMED_ASSERTION)
    JWT_MALFORMED = ("jwt_malformed", Row.MALFORMED_ASSERTION)
    JWT_HEADER_TOO_LARGE = ("jwt_header_too_large", Row.MALFORMED_ASSERTION)
    JWT_PAYLOAD_TOO_LARGE = ("jwt_payload_too_large", Row.MALFORMED_ASSERTION)
    JWT_DUPLICATE_KEY = ("jwt_duplicate_key", Row.MALFORMED_ASSERTION)
    JWT_NOT_OBJECT = ("jwt_not_object", Row.MALFORMED_ASSERTION)
    ALG_FORBIDDEN = ("alg_forbidden", Row.MALFORMED_ASSERTION)
    HEADER_FORBIDDEN = ("header_forbidden", Row.MALFORMED_ASSERTION)
    CRIT_UNSUPPORTED = ("crit_unsupported", Row.MALFORMED_ASSERTION)
    KID_INVALID = ("kid_invalid", Row.MALFORMED_ASSERTION)
    TYP_INVALID = ("typ_invalid", Row.MALFORMED_ASSERTION)
    ISS_MISSING = ("iss_missing", Row.CLIENT_IDENTIFICATION)
    ISS_UNKNOWN = ("iss_unknown", Row.CLIENT_IDENTIFICATION)
    CLIENT_DISABLED = ("client_disabled", Row.CLIENT_IDENTIFICATION)
    ALG_NOT_ALLOWED_FOR_CLIENT = ("alg_not_allowed_for_client", Row.CLIENT_IDENTIFICATION)
    GRANT_NOT_ALLOWED = ("grant_not_allowed", Row.UNAUTHORIZED_CLIENT)
    CLAIM_MISSING = ("claim_missing", Row.INVALID_GRANT)
    CLAIM_INVALID = ("claim_invalid", Row.INVALID_GRANT)
    EXPIRED = ("expired", Row.INVALID_GRANT)
    EXP_TOO_FAR = ("exp_too_far", Row.INVALID_GRANT)
    LIFETIME_TOO_LONG = ("lifetime_too_long", Row.INVALID_GRANT)
    IAT_IN_FUTURE = ("iat_in_future", Row.INVALID_GRANT)
    NOT_YET_VALID = ("not_yet_valid", Row.INVALID_GRANT)
    AUDIENCE_MISMATCH = ("audience_mismatch", Row.INVALID_GRANT)
    SUBJECT_FORMAT = ("subject_format", Row.INVALID_GRANT)
    JTI_MISSING = ("jti_missing", Row.INVALID_GRANT)
    JTI_INVALID = ("jti_invalid", Row.INVALID_GRANT)
    KEY_NOT_FOUND = ("key_not_found", Row.CLIENT_IDENTIFICATION)
    SIGNATURE_INVALID = ("signature_invalid", Row.CLIENT_IDENTIFICATION)
    REPLAY = ("replay", Row.INVALID_GRANT)
    STATE_UNAVAILABLE = ("state_unavailable", Row.UPSTREAM_UNAVAILABLE)
    # upstream: stages upstream_guard, forward, response
    UPSTREAM_UNREACHABLE = ("upstream_unreachable", Row.UPSTREAM_UNAVAILABLE)
    UPSTREAM_SHED = ("upstream_shed", Row.UPSTREAM_UNAVAILABLE)
    UPSTREAM_CIRCUIT_OPEN = ("upstream_circuit_open", Row.UPSTREAM_UNAVAILABLE)
    UPSTREAM_TIMEOUT = ("upstream_timeout", Row.UPSTREAM_TIMEOUT)
    UPSTREAM_BAD_RESPONSE = ("upstream_bad_response", Row.UPSTREAM_UNAVAILABLE)
    UPSTREAM_REJECTED_CREDENTIALS = ("upstream_rejected_credentials", Row.UPSTREAM_REJECTED_CREDENTIALS)
    INTERNAL_ERROR = ("internal_error", Row.INTERNAL)

    def __init__(self, code: str, row: Row) -> None:
        self.code = code
        self.row = row


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request stops, and where; `retry_after` feeds the Retry-After header."""

    reason: Reason
    stage: str
    retry_after: float | None = None


# (status, error, description) per row; the description is deliberately generic where it must not
# tell an unknown `iss` from a bad signature (no client-existence oracle).
_IMPLICIT: dict[Row, tuple[int, str, str]] = {
    Row.BODY_TOO_LARGE: (413, "invalid_request", "request body too large"),
    Row.INVALID_REQUEST: (400, "invalid_request", "malformed token request"),
    Row.METHOD_NOT_ALLOWED: (405, "invalid_request", "the token endpoint accepts POST only"),
    Row.NOT_FOUND: (404, "invalid_request", "unknown endpoint"),
    Row.REQUEST_TIMEOUT: (408, "invalid_request", "request body not received in time"),
    Row.HEADERS_TOO_LARGE: (431, "invalid_request", "request headers too large"),
    Row.UNSUPPORTED_GRANT: (400, "unsupported_grant_type", "grant type not supported"),
    Row.MALFORMED_ASSERTION: (400, "invalid_grant", "malformed assertion"),
    Row.CLIENT_IDENTIFICATION: (401, "invalid_client", "client authentication failed"),
    Row.UNAUTHORIZED_CLIENT: (400, "unauthorized_client", "client not allowed to use this grant type"),
    Row.INVALID_GRANT: (400, "invalid_grant", "invalid assertion"),
    Row.RATE_LIMITED: (429, "temporarily_unavailable", "too many requests"),
    Row.UPSTREAM_UNAVAILABLE: (503, "temporarily_unavailable", "service temporarily unavailable"),
    Row.UPSTREAM_TIMEOUT: (504, "temporarily_unavailable", "authorization server timed out"),
    Row.UPSTREAM_REJECTED_CREDENTIALS: (502, "server_error", "gateway misconfiguration"),
    Row.INTERNAL: (500, "server_error", "internal error"),
}
# RFC 7521 §4.1 / RFC 7523 §3.1: every assertion fault is invalid_grant under the strict profile.
_RFC7523 = {**_IMPLICIT, Row.CLIENT_IDENTIFICATION: (400, "invalid_grant", "invalid assertion")}

PROFILES: dict[str, dict[Row, tuple[int, str, str]]] = {
    "implicit-client-auth": _IMPLICIT,
    "rfc7523": _RFC7523,
}

NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# Every error body encoded once: a flood of rejections pays no JSON encoding per request.
_BODIES: dict[tuple[str, Row], bytes] = {
    (profile, row): json.dumps({"error": error, "error_description": description}, separators=(",", ":")).encode()
    for profile, table in PROFILES.items()
    for row, (_, error, description) in table.items()
}


def rejection_parts(rejection: Rejection, profile: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a rejection under the given error profile: one home for both listeners."""
    status = PROFILES[profile][rejection.reason.row][0]
    headers = dict(NO_STORE_HEADERS)
    if rejection.retry_after is not None:
        headers["Retry-After"] = str(retry_after_seconds(rejection.retry_after))
    if rejection.reason.row is Row.METHOD_NOT_ALLOWED:
        headers["Allow"] = "POST"
    if status == 401:
        # RFC 6749 §5.2: a 401 invalid_client answer carries WWW-Authenticate.
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    return status, headers, _BODIES[(profile, rejection.reason.row)]


def retry_after_seconds(retry_after: float) -> int:
    """Retry-After in whole seconds, rounded up, at least 1."""
    return max(1, int(retry_after + 0.999))


def error_response(rejection: Rejection, profile: str) -> web.Response:
    """The RFC 6749 §5.2 JSON error body for a rejection under the given error profile (aiohttp listener)."""
    status, headers, body = rejection_parts(rejection, profile)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
