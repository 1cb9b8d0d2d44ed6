"""Issue: real Keycloak end to end. An unmodified Keycloak 26.7.3 serves the CAMARA JWT-bearer flow
behind the gateway; what it refuses without the gateway; what never reaches it."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from gateway.jose.signing import generate_private_key_pem, load_signing_key, mint_assertion
from tests.e2e import keycloak_proc as kcp
from tests.e2e.conftest import E2E

pytestmark = pytest.mark.e2e
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def camara_assertion(e2e: E2E, caller: str, **overrides: Any) -> str:
    """The request a CAMARA client sends: iss = its client id, aud = the gateway's token URL."""
    key = overrides.pop("key", e2e.callers[caller].key)
    args: dict[str, Any] = {"iss": caller, "sub": "tel:+34600000001", "aud": e2e.audience, "scope": SCOPE}
    args.update(overrides)
    return mint_assertion(key, **args)


def post(url: str, assertion: str, **extra: str) -> tuple[int, Any]:
    # No client authentication at all: the assertion is the client authentication (CAMARA).
    return kcp.KeycloakProcess.post_form(url, {"grant_type": JWT_BEARER, "assertion": assertion, **extra})


@pytest.mark.parametrize(
    ("caller", "as_client", "sub", "username"),
    [
        ("acme-secret", kcp.SECRET_CLIENT_ID, "tel:+34600000001", "+34600000001"),
        ("acme-pkjwt", kcp.PKJWT_CLIENT_ID, "tel:+34600000002", "+34600000002"),
    ],
)
def test_camara_request_gets_a_keycloak_token(e2e: E2E, caller, as_client, sub, username):
    status, body = post(e2e.token_url, camara_assertion(e2e, caller, sub=sub))
    assert status == 200, body
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    token = claims_of(body["access_token"])
    assert token["iss"] == e2e.keycloak.issuer
    assert token["azp"] == as_client  # the client the gateway authenticated as
    assert token["preferred_username"] == username  # the user linked to the CAMARA sub
    assert set(SCOPE.split()) <= set(token["scope"].split())


def test_same_request_straight_to_keycloak_is_refused(e2e: E2E):
    """The gap the gateway closes: Keycloak wants client authentication first."""
    status, body = post(e2e.keycloak.token_url, camara_assertion(e2e, "acme-secret"))
    assert (status, body["error"]) == (401, "invalid_client")
    # Even with the client's secret added, Keycloak knows no identity provider for iss = client id.
    status, body = kcp.KeycloakProcess.post_form(
        e2e.keycloak.token_url,
        {"grant_type": JWT_BEARER, "assertion": camara_assertion(e2e, "acme-secret")},
        {"Authorization": "Basic " + base64.b64encode(
            f"{kcp.SECRET_CLIENT_ID}:{kcp.SECRET_CLIENT_SECRET}".encode()).decode()},
    )
    assert (status, body["error"], body["error_description"]) == (
        400, "invalid_grant", "No Identity Provider for provided issuer")


def _rejections(e2e: E2E) -> list[tuple[str, str, int, str]]:
    forger = load_signing_key(generate_private_key_pem("ES256"), alg="ES256", kid="acme-secret-1", source="forger")
    now = int(time.time())
    replayed = camara_assertion(e2e, "acme-secret")
    assert post(e2e.token_url, replayed)[0] == 200
    return [
        ("replayed", replayed, 400, "invalid_grant"),
        ("expired", camara_assertion(e2e, "acme-secret", now=now - 400, lifetime=300), 400, "invalid_grant"),
        ("wrong aud", camara_assertion(e2e, "acme-secret", aud=e2e.keycloak.token_url), 400, "invalid_grant"),
        ("unknown iss", camara_assertion(e2e, "acme-secret", iss="nobody"), 401, "invalid_client"),
        ("bad signature", camara_assertion(e2e, "acme-secret", key=forger), 401, "invalid_client"),
        ("sub not a CAMARA format", camara_assertion(e2e, "acme-secret", sub="alice"), 400, "invalid_grant"),
    ]


def test_rejected_assertions_never_reach_keycloak(e2e: E2E):
    cases = _rejections(e2e)
    before = e2e.keycloak.token_requests_seen()
    for name, assertion, status, error in cases:
        got_status, body = post(e2e.token_url, assertion)
        assert (got_status, body["error"]) == (status, error), name
    # Keycloak logs one event per jwt-bearer request it sees: none of these arrived.
    assert e2e.keycloak.token_requests_seen() == before


def test_subject_without_keycloak_user_passes_keycloaks_answer_through(e2e: E2E):
    before = e2e.keycloak.token_requests_seen()
    status, body = post(e2e.token_url, camara_assertion(e2e, "acme-secret", sub="tel:+34699999999"))
    assert (status, body) == (400, {"error": "invalid_grant", "error_description": "User not found"})
    assert e2e.keycloak.token_requests_seen() == before + 1


def test_wrong_client_secret_in_gateway_config_is_502(e2e: E2E):
    status, body = post(e2e.token_url, camara_assertion(e2e, "acme-misconfigured"))
    assert (status, body["error"]) == (502, "server_error")
    errors = e2e.keycloak.events(kcp.EVENT_GRANT_ERROR, client=kcp.SECRET_CLIENT_ID)
    assert any(event.get("error") == "invalid_client_credentials" for event in errors)
    with __import__("urllib.request").request.urlopen(e2e.admin_url + "/metrics") as response:
        text = response.read().decode()
    assert 'bearer_gateway_upstream_credential_rejections_total{client="acme-misconfigured"} 1.0' in text


def test_gateway_jwks_is_what_keycloak_trusts(e2e: E2E):
    with __import__("urllib.request").request.urlopen(e2e.gateway_url + "/.well-known/jwks.json") as response:
        jwks = json.loads(response.read())
    assert [key["kid"] for key in jwks["keys"]] == ["gw-1"]
    provider = e2e.keycloak.admin("GET", f"identity-provider/instances/{kcp.IDP_ALIAS}")
    assert provider["config"]["issuer"] == e2e.gateway_url
    assert provider["config"]["jwksUrl"] == e2e.gateway_url + "/.well-known/jwks.json"
