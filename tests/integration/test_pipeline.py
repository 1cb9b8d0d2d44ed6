"""Issue: the jwt-bearer check pipeline. Every rule and every error-table row, over real sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.gateway import AUDIENCE, JWT_BEARER, base_config
from tests.support.hostile import audit_lines
from tests.support.keys import ClientKey, client_entry, client_key

SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_jwt(header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"sig") -> str:
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64(h)}.{b64(p)}.{b64(signature)}"


def claims(key: ClientKey, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": key.client_id, "sub": "tel:+34600000001", "aud": AUDIENCE, "iat": now, "exp": now + 120,
            "jti": f"jti-{time.monotonic_ns()}", "scope": SCOPE}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(key: ClientKey, header: dict[str, Any] | None = None, **overrides: Any) -> str:
    """A correctly signed assertion with any claims; header extras go through the signer."""
    body = claims(key, **overrides)
    extra = {k: v for k, v in (header or {}).items() if k not in ("alg", "kid", "typ")}
    return key.signer.sign(body, extra_header=extra or None)


def resigned_header(key: ClientKey, header: dict[str, Any], **overrides: Any) -> str:
    """Sign an arbitrary header (incl. alg/kid) with the client's key, bypassing the signer's header."""
    from gateway.jose.keys import ALGORITHM_OBJECTS

    h = b64(json.dumps(header))
    p = b64(json.dumps(claims(key, **overrides)))
    signature = ALGORITHM_OBJECTS[key.alg].sign(f"{h}.{p}".encode(), key.signer.key)
    return f"{h}.{p}.{b64(signature)}"


ES = client_key("acme-es", "ES256")
RS = client_key("acme-rs", "RS256")
PS = client_key("acme-ps", "PS256")
ED = client_key("acme-ed", "EdDSA")
OTHER = client_key("attacker", "ES256", kid=ES.kid)  # same kid as ES, different key
DISABLED = client_key("acme-disabled", "ES256")
NO_GRANT = client_key("acme-no-grant", "ES256")
ES_ONLY = client_key("acme-es-only", "RS256")  # holds an RS256 key but may use ES256 only


def clients() -> list[dict[str, Any]]:
    return [
        client_entry(ES), client_entry(RS), client_entry(PS), client_entry(ED),
        client_entry(DISABLED, enabled=False),
        client_entry(NO_GRANT, grant_types=[]),
        {"client_id": ES_ONLY.client_id, "algorithms": ["ES256"],
         "keys": {"jwks": {"keys": [ES_ONLY.signer.public_jwk(), client_key("es-only-ec", "ES256").signer.public_jwk()]}}},
    ]


@pytest.fixture
async def gw(upstream, gateway_factory):
    return await gateway_factory(base_config(upstream.token_url, clients=clients()))


@pytest.mark.parametrize("key", [RS, PS, ES, ED], ids=lambda k: k.alg)
async def test_valid_assertion_reaches_upstream(gw, upstream, key, caplog):
    caplog.set_level(logging.INFO, logger="bearer_gateway.audit")
    assertion = key.assertion()
    status, document, headers = await gw.token(assertion)
    assert status == 200, document
    assert document["access_token"] == "at-123"
    assert headers["Cache-Control"] == "no-store"
    assert len(upstream.seen) == 1
    form = upstream.seen[0].form
    assert form["grant_type"] == JWT_BEARER and form["assertion"] == assertion
    audit = audit_lines(caplog)
    assert audit[-1]["client"] == key.client_id and audit[-1]["outcome"] == "accepted"
    assert assertion not in caplog.text


@dataclass
class Case:
    name: str
    build: Callable[[], dict[str, str] | bytes]
    status: int
    error: str
    reason: str
    headers: dict[str, str] | None = None


def form(assertion: str, **extra: str) -> dict[str, str]:
    return {"grant_type": JWT_BEARER, "assertion": assertion, **extra}


def now() -> int:
    return int(time.time())


def hs256_with_public_key() -> dict[str, str]:
    # The classic key-confusion attack: HMAC keyed with the client's public key (RFC 8725 §2.1).
    public_pem = ES.signer.key.public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.SubjectPublicKeyInfo,
    )
    h = b64(json.dumps({"alg": "HS256", "kid": ES.kid}))
    p = b64(json.dumps(claims(ES)))
    signature = hmac.new(public_pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return form(f"{h}.{p}.{b64(signature)}")


def tampered_signature() -> dict[str, str]:
    token = ES.assertion()
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 0x01
    return form(f"{head}.{payload}.{b64(bytes(raw))}")


def swapped_payload() -> dict[str, str]:
    head, _, sig = ES.assertion().split(".")
    return form(f"{head}.{b64(json.dumps(claims(ES, sub='tel:+34699999999')))}.{sig}")


DUP_HEADER = '{"alg":"ES256","alg":"none"}'
DUP_PAYLOAD = '{"iss":"acme-es","iss":"acme-rs"}'

# Expected (status, error) follow the implicit-client-auth profile of the design's error table.
BAD = 400, "invalid_grant"
CLIENT = 401, "invalid_client"
REQ = 400, "invalid_request"

CASES: list[Case] = [
    # request rules and client-authentication conflicts
    Case("missing assertion", lambda: {"grant_type": JWT_BEARER}, *REQ, "assertion_missing"),
    Case("empty assertion", lambda: form(""), *REQ, "assertion_missing"),
    Case("scope form parameter", lambda: form(ES.assertion(), scope=SCOPE), *REQ, "scope_parameter"),
    Case("client_secret parameter", lambda: form(ES.assertion(), client_id="acme-es", client_secret="x"), *REQ,
         "client_auth_conflict"),
    Case("client_assertion parameter", lambda: form(ES.assertion(), client_assertion="a.b.c",
         client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), *REQ, "client_auth_conflict"),
    Case("Authorization header", lambda: form(ES.assertion()), *REQ, "client_auth_conflict",
         headers={"Authorization": "Basic YWNtZTpzZWNyZXQ="}),
    Case("repeated assertion parameter",
         lambda: f"grant_type={JWT_BEARER}&assertion={ES.assertion()}&assertion={ES.assertion()}".encode(), *REQ,
         "repeated_parameter"),
    # shape
    Case("two segments", lambda: form("abc.def"), *BAD, "jwt_malformed"),
    Case("four segments", lambda: form(ES.assertion() + ".x"), *BAD, "jwt_malformed"),
    Case("base64 padding", lambda: form(ES.assertion().replace(".", "=.", 1)), *BAD, "jwt_malformed"),
    Case("whitespace inside", lambda: form(ES.assertion().replace(".", " .", 1)), *BAD, "jwt_malformed"),
    Case("non-ASCII inside", lambda: form(ES.assertion().replace(".", "é.", 1)), *BAD, "jwt_malformed"),
    Case("empty signature", lambda: form(ES.assertion().rsplit(".", 1)[0] + "."), *BAD, "jwt_malformed"),
    Case("header not JSON", lambda: form(f"{b64('not json')}.{b64('{}')}.{b64('s')}"), *BAD, "jwt_malformed"),
    Case("header a JSON array", lambda: form(raw_jwt("[1,2]", claims(ES))), *BAD, "jwt_not_object"),
    Case("payload a JSON string", lambda: form(raw_jwt({"alg": "ES256"}, '"hello"')), *BAD, "jwt_not_object"),
    Case("oversized header", lambda: form(raw_jwt({"alg": "ES256", "pad": "x" * 1200}, claims(ES))), *BAD,
         "jwt_header_too_large"),
    Case("oversized payload", lambda: form(signed(ES, note="y" * 2100)), *BAD, "jwt_payload_too_large"),
    Case("assertion over max_assertion_bytes", lambda: form("a" * 2000 + "." + "b" * 2200 + ".c"), *BAD,
         "assertion_too_large"),
    Case("duplicate key in header", lambda: form(raw_jwt(DUP_HEADER, claims(ES))), *BAD, "jwt_duplicate_key"),
    Case("duplicate key in payload", lambda: form(raw_jwt({"alg": "ES256"}, DUP_PAYLOAD)), *BAD, "jwt_duplicate_key"),
    Case("NaN in payload", lambda: form(raw_jwt({"alg": "ES256"}, '{"exp": NaN}')), *BAD, "jwt_malformed"),
    # header policy
    Case("alg none", lambda: form(raw_jwt({"alg": "none"}, claims(ES), b"x")), *BAD, "alg_forbidden"),
    Case("alg None (case)", lambda: form(raw_jwt({"alg": "None"}, claims(ES), b"x")), *BAD, "alg_forbidden"),
    Case("HS256 keyed with the public key", hs256_with_public_key, *BAD, "alg_forbidden"),
    Case("alg missing", lambda: form(raw_jwt({"kid": ES.kid}, claims(ES))), *BAD, "alg_forbidden"),
    Case("ES384 not allowed", lambda: form(raw_jwt({"alg": "ES384"}, claims(ES))), *BAD, "alg_forbidden"),
    Case("jku header", lambda: form(signed(ES, {"jku": "https://evil.example/jwks"})), *BAD, "header_forbidden"),
    Case("x5u header", lambda: form(signed(ES, {"x5u": "https://evil.example/cert"})), *BAD, "header_forbidden"),
    Case("jwk header", lambda: form(signed(ES, {"jwk": ES.signer.public_jwk()})), *BAD, "header_forbidden"),
    Case("x5c header", lambda: form(signed(ES, {"x5c": ["MIIB"]})), *BAD, "header_forbidden"),
    Case("crit header", lambda: form(signed(ES, {"crit": ["exp"]})), *BAD, "crit_unsupported"),
    Case("kid with path characters", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": "../../etc/passwd"})),
         *BAD, "kid_invalid"),
    Case("kid too long", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": "k" * 300})), *BAD, "kid_invalid"),
    Case("kid not a string", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": 7})), *BAD, "kid_invalid"),
    Case("typ of another JWT kind", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": ES.kid, "typ": "at+jwt"})),
         *BAD, "typ_invalid"),
    # claims
    Case("exp - iat > 300", lambda: form(signed(ES, iat=now() - 10, exp=now() + 295)), *BAD, "lifetime_too_long"),
    Case("exp more than 300 s ahead", lambda: form(signed(ES, iat=None, exp=now() + 600)), *BAD, "claim_missing"),
    Case("exp too far without iat required", lambda: form(signed(ES, exp=now() + 400, iat=now() + 200)), *BAD,
         "exp_too_far"),
    Case("iat in the future", lambda: form(signed(ES, iat=now() + 60, exp=now() + 120)), *BAD, "iat_in_future"),
    Case("expired", lambda: form(signed(ES, iat=now() - 200, exp=now() - 10)), *BAD, "expired"),
    Case("nbf in the future", lambda: form(signed(ES, nbf=now() + 60)), *BAD, "not_yet_valid"),
    Case("exp a string", lambda: form(signed(ES, exp=str(now() + 60))), *BAD, "claim_invalid"),
    Case("exp a boolean", lambda: form(signed(ES, exp=True)), *BAD, "claim_invalid"),
    Case("aud array of two", lambda: form(signed(ES, aud=[AUDIENCE, "https://other.example"])), *BAD,
         "audience_mismatch"),
    Case("aud another endpoint", lambda: form(signed(ES, aud="https://other.example/token")), *BAD,
         "audience_mismatch"),
    Case("aud with trailing slash", lambda: form(signed(ES, aud=AUDIENCE + "/")), *BAD, "audience_mismatch"),
    Case("sub a plain name", lambda: form(signed(ES, sub="alice")), *BAD, "subject_format"),
    Case("sub tel without +", lambda: form(signed(ES, sub="tel:34600000001")), *BAD, "subject_format"),
    Case("sub tel with separators", lambda: form(signed(ES, sub="tel:+34-600-000-001")), *BAD, "subject_format"),
    Case("sub ipport", lambda: form(signed(ES, sub="ipport:198.51.100.1:443")), *BAD, "subject_format"),
    Case("missing jti", lambda: form(signed(ES, jti=None)), *BAD, "jti_missing"),
    Case("jti not a string", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": ES.kid}, jti=42)), *BAD,
         "jti_invalid"),
    Case("missing scope claim", lambda: form(signed(ES, scope=None)), *BAD, "claim_missing"),
    Case("missing iss", lambda: form(signed(ES, iss=None)), *BAD, "claim_missing"),
    # client identification
    Case("unknown iss", lambda: form(signed(OTHER, iss="nobody")), *CLIENT, "iss_unknown"),
    Case("disabled client", lambda: form(DISABLED.assertion()), *CLIENT, "client_disabled"),
    Case("alg outside the client's list", lambda: form(ES_ONLY.assertion()), *CLIENT, "alg_not_allowed_for_client"),
    Case("forged signature for a known iss", lambda: form(signed(OTHER, iss=ES.client_id)), *CLIENT,
         "signature_invalid"),
    Case("tampered signature", tampered_signature, *CLIENT, "signature_invalid"),
    Case("payload swapped under a real signature", swapped_payload, *CLIENT, "signature_invalid"),
    Case("unknown kid", lambda: form(resigned_header(ES, {"alg": "ES256", "kid": "nope"})), *CLIENT, "key_not_found"),
    Case("RS256 header on a PS256 key", lambda: form(resigned_header(PS, {"alg": "RS256", "kid": PS.kid})), *CLIENT,
         "key_not_found"),
    Case("client not allowed the grant", lambda: form(NO_GRANT.assertion()), 400, "unauthorized_client",
         "grant_not_allowed"),
]


def test_case_count():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_rejections(gw, upstream, case: Case, caplog):
    caplog.set_level(logging.INFO, logger="bearer_gateway.audit")
    status, document, headers = await gw.post_form(case.build(), headers=case.headers)
    assert (status, document.get("error")) == (case.status, case.error), document
    assert headers["Cache-Control"] == "no-store"
    audit = audit_lines(caplog)
    assert audit[-1]["reason"] == case.reason
    assert audit[-1]["outcome"] == "rejected"
    assert upstream.seen == []


async def test_client_identification_failures_share_one_description(gw):
    bodies = set()
    for build in (lambda: form(signed(OTHER, iss="nobody")), lambda: form(signed(OTHER, iss=ES.client_id)),
                  lambda: form(DISABLED.assertion())):
        _, document, _ = await gw.post_form(build())
        bodies.add(json.dumps(document, sort_keys=True))
    assert len(bodies) == 1  # no oracle telling an unknown iss from a bad signature


async def test_replayed_jti_is_refused(gw, upstream):
    assertion = ES.assertion()
    assert (await gw.token(assertion))[0] == 200
    status, document, _ = await gw.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    # The same jti under another client is a different (iss, jti) pair.
    other = RS.assertion(jti=json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))["jti"])
    assert (await gw.token(other))[0] == 200
    assert len(upstream.seen) == 2


async def test_forgery_does_not_burn_the_real_jti(gw, upstream):
    jti = "shared-jti-1"
    forged = signed(OTHER, iss=ES.client_id, jti=jti)
    for _ in range(3):
        status, document, _ = await gw.token(forged)
        assert (status, document["error"]) == (401, "invalid_client")
    status, _, _ = await gw.token(signed(ES, jti=jti))
    assert status == 200
    assert len(upstream.seen) == 1


async def test_metrics_count_reasons_with_bounded_labels(gw):
    await gw.token(signed(OTHER, iss="some-random-issuer-" + "x" * 20))
    await gw.token(signed(OTHER, iss=ES.client_id))
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'reason="iss_unknown"' in text and 'reason="signature_invalid"' in text
    assert "some-random-issuer" not in text  # raw input never becomes a label
    assert 'bearer_gateway_stage_duration_seconds_count{stage="signature"}' in text


@pytest.mark.parametrize("policy", ["strip", "forward"])
async def test_incoming_client_auth_policies(upstream, gateway_factory, policy):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           profile={"audiences": [AUDIENCE], "incoming_client_auth": policy}))
    status, _, _ = await gw.post_form(form(ES.assertion(), client_id="acme-es", client_secret="from-caller"),
                                      headers={"Authorization": "Basic Y2FsbGVyOnBhc3M="})
    assert status == 200
    seen = upstream.seen[0]
    if policy == "strip":
        assert "client_secret" not in seen.form and "Authorization" not in seen.headers
    else:
        assert seen.form["client_secret"] == "from-caller"
        assert seen.headers["Authorization"] == "Basic Y2FsbGVyOnBhc3M="


async def test_scope_parameter_allowed_when_profile_says_so(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           profile={"audiences": [AUDIENCE], "forbid_scope_parameter": False}))
    assert (await gw.token(ES.assertion(), scope=SCOPE))[0] == 200


async def test_clock_skew_widens_the_window(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           profile={"audiences": [AUDIENCE], "clock_skew": "30s"}))
    assert (await gw.token(signed(ES, iat=now() + 10, exp=now() + 100)))[0] == 200
    assert (await gw.token(signed(ES, iat=now() - 200, exp=now() - 10)))[0] == 200
    status, document, _ = await gw.token(signed(ES, iat=now() + 60, exp=now() + 120))
    assert (status, document["error"]) == (400, "invalid_grant")


async def test_issuer_identifier_as_second_audience(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           profile={"audiences": [AUDIENCE, "https://gateway.test"]}))
    assert (await gw.token(signed(ES, aud="https://gateway.test")))[0] == 200
    assert (await gw.token(signed(ES, aud=["https://gateway.test"])))[0] == 200


async def test_operatortoken_subject(gw):
    assert (await gw.token(signed(ES, sub="operatortoken:abc-123.xyz")))[0] == 200
