"""Issue: upstream request builder. Forward and resign modes, injected client authentication, gateway keys.

Over real sockets: the caller -> the gateway -> an Authlib-based AS (tests/support/authlib_as.py) that
verifies every credential and assertion it receives, fetching the gateway's JWKS over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key
from tests.support.authlib_as import AuthlibAS, RegisteredClient
from tests.support.gateway import AUDIENCE, RunningGateway, base_config
from tests.support.keys import ClientKey, client_entry, client_key
from tests.support.tls import TestCA

GATEWAY_ISSUER = "https://gateway.test"
SUB = "tel:+34600000001"
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"
# RFC 6749 §2.3.1 makes client_secret_basic form-encode id and secret: ":", "%", "+", space, non-ASCII.
TRICKY_SECRET = "s3cr:t é%2B+&=/ x~*"
# RFC 9864 deprecates the polymorphic "EdDSA" name; the gateway still signs with it (design: algorithms).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
BEARER_GATEWAY = str(Path(sys.executable).with_name("bearer-gateway"))


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
async def authlib_as() -> AsyncIterator[AuthlibAS]:
    # Forward mode sends the caller's assertion unchanged: its aud is the gateway's token URL.
    server = await AuthlibAS(extra_audiences=[AUDIENCE]).start()
    yield server
    await server.stop()


def secret_ref(tmp_path: Path, name: str, value: str) -> dict[str, str]:
    path = tmp_path / f"{name}.secret"
    path.write_text(value, encoding="utf-8")
    return {"file": str(path)}


def signing_key(tmp_path: Path, kid: str, alg: str = "ES256") -> tuple[SigningKey, dict[str, str]]:
    """A private key on disk and the config entry naming it (gateway.keys[] or client_auth)."""
    pem = generate_private_key_pem(alg)
    path = tmp_path / f"{kid}.pem"
    path.write_bytes(pem)
    return load_signing_key(pem, alg=alg, kid=kid, source="test"), {
        "kid": kid,
        "alg": alg,
        "private_key_file": str(path),
    }


def caller(client_id: str) -> ClientKey:
    return client_key(client_id, "ES256")


def register_caller(server: AuthlibAS, key: ClientKey, method: str, **extra: Any) -> RegisteredClient:
    """The AS side of a forward-mode client: its credentials, and its keys for assertions whose iss it is."""
    return server.register(RegisteredClient(key.client_id, method, assertion_jwks=key.jwks(), **extra))


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


async def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    """A sample of the gateway's own /metrics on the admin listener (0 when absent)."""
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def rejected_credentials(gw: RunningGateway, client: str) -> float:
    return await metric(
        gw,
        "bearer_gateway_requests_total",
        outcome="rejected",
        reason="upstream_rejected_credentials",
        client=client,
    )


async def gateway_jwks(gw: RunningGateway) -> tuple[dict[str, Any], str]:
    async with gw.session.get(gw.url + "/.well-known/jwks.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        return await response.json(), response.headers["Cache-Control"]


def verify_with_jwks(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """Independent of the gateway's own code: PyJWT verifies with the key the published JWKS names by kid."""
    header = jwt.get_unverified_header(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk, algorithm=jwk["alg"])
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[jwk["alg"]], audience=audience)
    return claims


async def start_resign(
    gateway_factory: Any,
    server: AuthlibAS,
    tmp_path: Path,
    key: ClientKey,
    *,
    gateway_keys: list[dict[str, str]],
    upstream: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    as_client_id: str | None = None,
    secret: str = "resign-secret",
) -> RunningGateway:
    """A gateway re-issuing assertions for `key`'s client, the AS trusting it through its JWKS URL."""
    as_client_id = as_client_id or key.client_id
    server.register(RegisteredClient(as_client_id, "client_secret_basic", secret=secret))
    auth = {"method": "client_secret_basic", "client_id": as_client_id, "secret": secret_ref(tmp_path, "s", secret)}
    settings: dict[str, Any] = {"mode": "resign", "audience": server.issuer, "client_auth": auth, **(upstream or {})}
    config = base_config(
        server.token_url,
        gateway={"issuer": GATEWAY_ISSUER, "keys": gateway_keys},
        clients=[client_entry(key, upstream=settings)],
    )
    if profile:
        config["profile"] = {**config["profile"], **profile}
    gw: RunningGateway = await gateway_factory(config)
    server.trust_issuer(GATEWAY_ISSUER, gw.url + "/.well-known/jwks.json")
    # Prove the AS checks aud = its own identity (RFC 7523 §3 item 3), not the caller's audience.
    server.extra_audiences = []
    return gw


# -- every injected client authentication method is accepted by a verifying AS (forward mode) ---------


async def test_client_secret_basic_form_encodes_id_and_secret(authlib_as, gateway_factory, tmp_path):
    """RFC 6749 §2.3.1: id and secret are form-encoded before base64, so ":" and non-ASCII survive."""
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    as_client_id = "acme:app é"
    gw = await start_resign(
        gateway_factory,
        authlib_as,
        tmp_path,
        key,
        gateway_keys=[gw_key],
        as_client_id=as_client_id,
        secret=TRICKY_SECRET,
    )
    status, _, _ = await gw.token(key.assertion())
    record = authlib_as.last
    assert (record.status, record.auth_method, record.client_id) == (200, "client_secret_basic", as_client_id)
    assert status == 200 and record.basic_auth


async def test_client_secret_basic(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    register_caller(authlib_as, key, "client_secret_basic", secret=TRICKY_SECRET)
    auth = {"method": "client_secret_basic", "secret": secret_ref(tmp_path, "acme", TRICKY_SECRET)}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    assertion = key.assertion()
    status, document, _ = await gw.token(assertion)
    record = authlib_as.last
    assert (record.status, record.auth_method, record.client_id) == (200, "client_secret_basic", "acme")
    assert status == 200 and document["access_token"] == record.token["access_token"]
    # Forward mode: the caller's assertion goes up unchanged, verified by the AS with the caller's keys.
    assert record.form["assertion"] == assertion
    assert record.assertion_claims is not None and record.assertion_claims["iss"] == "acme"
    assert "client_id" not in record.form and "client_secret" not in record.form


async def test_client_secret_post(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    register_caller(authlib_as, key, "client_secret_post", secret=TRICKY_SECRET)
    auth = {"method": "client_secret_post", "secret": secret_ref(tmp_path, "acme", TRICKY_SECRET)}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    status, document, _ = await gw.token(key.assertion())
    record = authlib_as.last
    assert (record.status, record.auth_method, record.client_id) == (200, "client_secret_post", "acme")
    assert not record.basic_auth and record.form["client_id"] == "acme"
    assert status == 200 and "access_token" in document


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
async def test_private_key_jwt_with_a_client_key(authlib_as, gateway_factory, tmp_path, alg):
    key = caller("acme")
    auth_key, entry = signing_key(tmp_path, "acme-upstream", alg)
    register_caller(authlib_as, key, "private_key_jwt", auth_jwks={"keys": [auth_key.public_jwk()]})
    auth = {"method": "private_key_jwt", **entry}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    before = time.time()
    for _ in range(2):
        status, document, _ = await gw.token(key.assertion())
        assert status == 200, (document, authlib_as.last.error_description)
    after = time.time()
    first, second = authlib_as.records[-2:]
    for record in (first, second):
        assert (record.auth_method, record.client_id) == ("private_key_jwt", "acme")
        assert record.form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        header, claims = record.client_assertion_header, record.client_assertion_claims
        assert header is not None and claims is not None
        assert (header["alg"], header["kid"]) == (alg, "acme-upstream")
        # RFC 7523 §3: iss = sub = the AS client id, aud = the token endpoint by default, short life.
        assert claims["iss"] == claims["sub"] == "acme"
        assert claims["aud"] == authlib_as.token_url
        assert before - 1 <= claims["iat"] <= after + 1
        assert 0 < claims["exp"] - claims["iat"] <= 60
    assert first.client_assertion_claims["jti"] != second.client_assertion_claims["jti"]  # type: ignore[index]


async def test_private_key_jwt_audience_is_the_configured_issuer(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    auth_key, entry = signing_key(tmp_path, "acme-upstream")
    register_caller(authlib_as, key, "private_key_jwt", auth_jwks={"keys": [auth_key.public_jwk()]})
    auth = {"method": "private_key_jwt", "audience": authlib_as.issuer, **entry}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    status, _, _ = await gw.token(key.assertion())
    assert status == 200, authlib_as.last.error_description
    assert authlib_as.last.client_assertion_claims["aud"] == authlib_as.issuer  # type: ignore[index]


async def test_private_key_jwt_with_the_gateway_key(authlib_as, gateway_factory, tmp_path):
    """Keycloak's federated JWT client authenticator: the AS trusts the gateway's JWKS for the client."""
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1", "ES256")
    client = register_caller(authlib_as, key, "private_key_jwt")
    auth = {"method": "private_key_jwt", "use_gateway_key": True}
    gw = await gateway_factory(
        base_config(
            authlib_as.token_url,
            gateway={"issuer": GATEWAY_ISSUER, "keys": [gw_key]},
            clients=[client_entry(key, upstream={"client_auth": auth})],
        )
    )
    client.auth_jwks_uri = gw.url + "/.well-known/jwks.json"
    status, _, _ = await gw.token(key.assertion())
    record = authlib_as.last
    assert status == 200, record.error_description
    assert record.auth_method == "private_key_jwt"
    assert record.client_assertion_header["kid"] == "gw-1"  # type: ignore[index]
    assert authlib_as.jwks_fetches[-1][0] == client.auth_jwks_uri


async def test_none_sends_the_assertion_alone(authlib_as, gateway_factory):
    key = caller("acme")
    register_caller(authlib_as, key, "none")
    gw = await gateway_factory(base_config(authlib_as.token_url, clients=[client_entry(key)]))
    status, _, _ = await gw.token(key.assertion())
    record = authlib_as.last
    assert (status, record.auth_method, record.client_id) == (200, "none", "acme")
    assert set(record.form) == {"grant_type", "assertion"} and not record.basic_auth


# -- wrong credentials: the AS refuses them, the gateway answers 502 server_error ---------------------


async def _expect_rejected_credentials(gw: RunningGateway, server: AuthlibAS, key: ClientKey) -> None:
    before = await rejected_credentials(gw, key.client_id)
    status, document, headers = await gw.token(key.assertion())
    record = server.last
    assert record.error in ("invalid_client", "unauthorized_client"), record.error
    assert status == 502
    assert document == {"error": "server_error", "error_description": "gateway misconfiguration"}
    assert headers["Cache-Control"] == "no-store"
    assert await rejected_credentials(gw, key.client_id) == before + 1


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_wrong_secret_is_rejected_and_reported_as_502(authlib_as, gateway_factory, tmp_path, method):
    key = caller("acme")
    register_caller(authlib_as, key, method, secret=TRICKY_SECRET)
    auth = {"method": method, "secret": secret_ref(tmp_path, "acme", TRICKY_SECRET + "x")}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    await _expect_rejected_credentials(gw, authlib_as, key)
    assert authlib_as.last.auth_method is None


async def test_wrong_client_key_is_rejected_and_reported_as_502(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    registered, _ = signing_key(tmp_path, "registered")
    _, configured = signing_key(tmp_path, "configured")
    configured["kid"] = "registered"  # same kid, another key: only the signature tells them apart
    register_caller(authlib_as, key, "private_key_jwt", auth_jwks={"keys": [registered.public_jwk()]})
    gw = await gateway_factory(
        base_config(
            authlib_as.token_url,
            clients=[client_entry(key, upstream={"client_auth": {"method": "private_key_jwt", **configured}})],
        )
    )
    await _expect_rejected_credentials(gw, authlib_as, key)


async def test_wrong_gateway_key_for_private_key_jwt_is_rejected(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    stranger, _ = signing_key(tmp_path, "gw-1")  # the AS trusts a key the gateway does not hold
    _, gw_key = signing_key(tmp_path, "gw-2")
    register_caller(authlib_as, key, "private_key_jwt", auth_jwks={"keys": [stranger.public_jwk()]})
    gw = await gateway_factory(
        base_config(
            authlib_as.token_url,
            gateway={"keys": [gw_key]},
            clients=[
                client_entry(key, upstream={"client_auth": {"method": "private_key_jwt", "use_gateway_key": True}})
            ],
        )
    )
    await _expect_rejected_credentials(gw, authlib_as, key)


async def test_client_not_allowed_the_grant_is_a_misconfiguration(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    register_caller(authlib_as, key, "client_secret_post", secret="right", grant_types=())
    auth = {"method": "client_secret_post", "secret": secret_ref(tmp_path, "acme", "right")}
    gw = await gateway_factory(
        base_config(authlib_as.token_url, clients=[client_entry(key, upstream={"client_auth": auth})])
    )
    await _expect_rejected_credentials(gw, authlib_as, key)
    assert authlib_as.last.error == "unauthorized_client"


async def test_without_injected_credentials_invalid_client_passes_through(authlib_as, gateway_factory):
    """Method none injects nothing, so an AS complaint is not about the gateway's credentials."""
    key = caller("acme")
    register_caller(authlib_as, key, "client_secret_basic", secret="s")
    gw = await gateway_factory(base_config(authlib_as.token_url, clients=[client_entry(key)]))
    status, document, _ = await gw.token(key.assertion())
    assert authlib_as.last.error == "invalid_client"
    assert (status, document["error"]) == (authlib_as.last.status, "invalid_client")


# -- other AS answers pass through unchanged --------------------------------------------------------------


async def _forward_gateway(server: AuthlibAS, gateway_factory: Any, tmp_path: Path, **sections: Any) -> RunningGateway:
    key = caller("acme")
    register_caller(server, key, "client_secret_post", secret="right")
    auth = {"method": "client_secret_post", "secret": secret_ref(tmp_path, "acme", "right")}
    upstream = {"client_auth": auth, **sections.pop("upstream", {})}
    gw: RunningGateway = await gateway_factory(
        base_config(server.token_url, clients=[client_entry(key, upstream=upstream)], **sections)
    )
    return gw


async def _raw_token(gw: RunningGateway, assertion: str) -> tuple[int, bytes]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    async with gw.session.post(gw.token_url, data=form) as response:
        return response.status, await response.read()


async def test_invalid_grant_passes_through_unchanged(authlib_as, gateway_factory, tmp_path):
    authlib_as.subjects = {"tel:+34600000999"}  # the caller's subject is unknown to the AS
    gw = await _forward_gateway(authlib_as, gateway_factory, tmp_path)
    status, body = await _raw_token(gw, caller("acme").assertion())
    record = authlib_as.last
    assert (record.status, record.error) == (400, "invalid_grant")
    assert (status, body) == (400, record.response_body)


async def test_invalid_scope_passes_through_unchanged(authlib_as, gateway_factory, tmp_path):
    authlib_as.scopes_supported = ["openid"]
    gw = await _forward_gateway(authlib_as, gateway_factory, tmp_path, upstream={"scope_parameter": True})
    status, body = await _raw_token(gw, caller("acme").assertion())
    record = authlib_as.last
    assert record.form["scope"] == SCOPE and record.error == "invalid_scope"
    assert (status, body) == (400, record.response_body)


async def test_refresh_token_dropped_by_default(authlib_as, gateway_factory, tmp_path):
    authlib_as.issue_refresh_token = True
    gw = await _forward_gateway(authlib_as, gateway_factory, tmp_path)
    status, document, headers = await gw.token(caller("acme").assertion())
    token = authlib_as.last.token
    assert token is not None and "refresh_token" in token
    assert status == 200
    assert document == {k: v for k, v in token.items() if k != "refresh_token"}
    assert headers["Cache-Control"] == "no-store"


async def test_refresh_token_kept_when_not_dropped(authlib_as, gateway_factory, tmp_path):
    authlib_as.issue_refresh_token = True
    gw = await _forward_gateway(authlib_as, gateway_factory, tmp_path, profile={"drop_refresh_token": False})
    status, document, _ = await gw.token(caller("acme").assertion())
    assert status == 200 and document == authlib_as.last.token and "refresh_token" in document


# -- resign: a new assertion from the gateway, verified by the AS with the gateway's JWKS over HTTP -------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
async def test_resign_assertion_verifies_against_the_published_jwks(authlib_as, gateway_factory, tmp_path, alg):
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, f"gw-{alg.lower()}", alg)
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key])
    incoming = key.assertion(jti="caller-jti-1", acr="2", foo="not copied")
    before = int(time.time())
    status, document, _ = await gw.token(incoming)
    after = int(time.time())
    record = authlib_as.last
    assert status == 200, record.error_description
    assert document["access_token"] == record.token["access_token"]  # type: ignore[index]
    # The AS fetched the gateway's JWKS over HTTP and verified the signature with it.
    jwks_uri, cache_control = authlib_as.jwks_fetches[-1]
    assert jwks_uri == gw.url + "/.well-known/jwks.json"
    assert cache_control == "public, max-age=300"
    header, claims = record.assertion_header, record.assertion_claims
    assert header is not None and claims is not None
    assert (header["alg"], header["kid"]) == (alg, gw_key["kid"])
    assert record.form["assertion"] != incoming
    # Design, Upstream modes: iss = gateway issuer, aud = the AS, sub from the caller, fresh jti, short life.
    assert claims["iss"] == GATEWAY_ISSUER
    assert claims["aud"] == authlib_as.issuer
    assert claims["sub"] == SUB
    assert claims["scope"] == SCOPE
    assert "acr" not in claims and "foo" not in claims  # only copy_claims (default: scope) are copied
    assert claims["jti"] != "caller-jti-1"
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == 60
    # The test verifies it once more itself, with PyJWT and the JWKS it fetches over HTTP.
    jwks, _ = await gateway_jwks(gw)
    assert verify_with_jwks(record.form["assertion"], jwks, authlib_as.issuer) == claims
    # Explicit client authentication comes with it; no scope form parameter unless asked for.
    assert record.auth_method == "client_secret_basic" and "scope" not in record.form


async def test_resign_mints_a_fresh_jti_per_request(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key])
    incoming = [key.assertion() for _ in range(3)]
    for assertion in incoming:
        status, _, _ = await gw.token(assertion)
        assert status == 200, authlib_as.last.error_description
    jtis = [r.assertion_claims["jti"] for r in authlib_as.records[-3:]]  # type: ignore[index]
    caller_jtis = {decode_unverified(a)[1]["jti"] for a in incoming}
    assert len(set(jtis)) == 3 and not set(jtis) & caller_jtis


async def test_resign_lifetime_and_copied_claims_follow_the_config(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    upstream = {"lifetime": "20s", "copy_claims": ["scope", "acr", "iss", "aud", "jti", "exp", "iat"]}
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key], upstream=upstream)
    before = int(time.time())
    status, _, _ = await gw.token(key.assertion(acr="2", lifetime=300, jti="caller-jti", now=before - 100))
    claims = authlib_as.last.assertion_claims
    assert status == 200 and claims is not None
    assert claims["acr"] == "2" and claims["scope"] == SCOPE
    # Copying never overrides what the gateway sets itself: issuer, audience, jti and its own short life.
    assert (claims["iss"], claims["aud"]) == (GATEWAY_ISSUER, authlib_as.issuer)
    assert claims["jti"] != "caller-jti"
    assert claims["iat"] >= before and claims["exp"] - claims["iat"] == 20


async def test_resign_subject_map(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    authlib_as.subjects = {"user-42"}
    _, gw_key = signing_key(tmp_path, "gw-1")
    upstream = {"subject_map": {SUB: "user-42"}}
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key], upstream=upstream)
    status, _, _ = await gw.token(key.assertion())
    assert status == 200 and authlib_as.last.assertion_claims["sub"] == "user-42"  # type: ignore[index]
    # An unmapped subject goes up as it came; this AS does not know it: invalid_grant, passed through.
    status, body = await _raw_token(gw, key.assertion(sub="tel:+34600000002"))
    record = authlib_as.last
    assert record.assertion_claims is not None and record.assertion_claims["sub"] == "tel:+34600000002"
    assert record.error == "invalid_grant"
    assert (status, body) == (400, record.response_body)


async def test_resign_scope_parameter(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    upstream = {"scope_parameter": True}
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key], upstream=upstream)
    status, document, _ = await gw.token(key.assertion())
    record = authlib_as.last
    assert status == 200 and record.form["scope"] == SCOPE == record.assertion_claims["scope"]  # type: ignore[index]
    assert document["scope"] == SCOPE


async def test_resign_without_a_caller_subject_leaves_the_refusal_to_the_as(authlib_as, gateway_factory, tmp_path):
    """A profile may stop requiring sub; the re-issued assertion then has none and the AS refuses it."""
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    profile = {"required_claims": ["iss", "aud", "exp", "iat", "jti", "scope"]}
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key], profile=profile)
    now = int(time.time())
    claims = {"iss": "acme", "aud": AUDIENCE, "iat": now, "exp": now + 60, "jti": "no-sub-1", "scope": SCOPE}
    status, body = await _raw_token(gw, key.signer.sign(claims))
    record = authlib_as.last
    assert "sub" not in decode_unverified(record.form["assertion"])[1]
    assert record.error == "invalid_grant"
    assert (status, body) == (400, record.response_body)


async def test_resign_rejected_when_the_as_does_not_trust_the_gateway_key(authlib_as, gateway_factory, tmp_path):
    """The AS really verifies: a JWKS without the signing key makes it refuse the grant."""
    key = caller("acme")
    _, gw_key = signing_key(tmp_path, "gw-1")
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[gw_key])
    other = generate_private_key_pem("ES256")
    stranger = load_signing_key(other, alg="ES256", kid="gw-1", source="test")
    jwks_path = tmp_path / "stranger.json"
    jwks_path.write_text(json.dumps({"keys": [stranger.public_jwk()]}))
    authlib_as.trust_issuer(GATEWAY_ISSUER, jwks_path.as_uri())
    status, document, _ = await gw.token(key.assertion())
    assert authlib_as.last.error == "invalid_grant"
    assert (status, document["error"]) == (400, "invalid_grant")


# -- key rotation ------------------------------------------------------------------------------------------


async def test_key_rotation_first_key_signs_all_are_published(authlib_as, gateway_factory, tmp_path):
    key = caller("acme")
    new_key, new_entry = signing_key(tmp_path, "gw-2026", "ES256")
    old_key, old_entry = signing_key(tmp_path, "gw-2025", "RS256")
    gw = await start_resign(gateway_factory, authlib_as, tmp_path, key, gateway_keys=[new_entry, old_entry])
    jwks, cache_control = await gateway_jwks(gw)
    assert cache_control == "public, max-age=300"
    assert [k["kid"] for k in jwks["keys"]] == ["gw-2026", "gw-2025"]
    assert jwks["keys"] == [new_key.public_jwk(), old_key.public_jwk()]
    private_members = {"d", "p", "q", "dp", "dq", "qi"}
    assert all(not private_members & set(k) for k in jwks["keys"])
    for _ in range(2):
        status, _, _ = await gw.token(key.assertion())
        assert status == 200, authlib_as.last.error_description
        assert authlib_as.last.assertion_header["kid"] == "gw-2026"  # type: ignore[index]
    # The retiring key still verifies what it signed before the rotation, from the same document.
    old_token = old_key.sign({"iss": GATEWAY_ISSUER, "aud": authlib_as.issuer, "exp": int(time.time()) + 60})
    assert verify_with_jwks(old_token, jwks, authlib_as.issuer)["iss"] == GATEWAY_ISSUER


async def test_jwks_is_empty_without_gateway_keys(authlib_as, gateway_factory):
    gw = await gateway_factory(base_config(authlib_as.token_url))
    jwks, cache_control = await gateway_jwks(gw)
    assert jwks == {"keys": []} and cache_control.startswith("public, max-age=")


# -- tls_client_auth: per-client certificates on the upstream TLS connection (RFC 8705 §2) ---------------


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


async def _tls_as(pki: TestCA, *, require_client_cert: bool) -> AuthlibAS:
    context = pki.server_context(pki.server(), require_client_cert=require_client_cert)
    return await AuthlibAS(tls=context, extra_audiences=[AUDIENCE]).start()


def _tls_config(server: AuthlibAS, pki: TestCA, clients: list[dict[str, Any]]) -> dict[str, Any]:
    config = base_config(server.token_url, clients=clients)
    config["upstream"]["tls"] = {"ca_file": str(pki.cert_file)}
    return config


def _tls_client(key: ClientKey, cert: Any) -> dict[str, Any]:
    auth = {"method": "tls_client_auth", "cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
    return client_entry(key, upstream={"client_auth": auth})


async def test_tls_client_auth_presents_each_clients_certificate(pki, gateway_factory):
    server = await _tls_as(pki, require_client_cert=True)
    try:
        acme, beta = caller("acme"), caller("beta")
        acme_cert, beta_cert = pki.client("acme"), pki.client("beta")
        register_caller(server, acme, "tls_client_auth", tls_subject_dn=acme_cert.subject)
        register_caller(server, beta, "tls_client_auth", tls_subject_dn=beta_cert.subject)
        gw = await gateway_factory(
            _tls_config(server, pki, [_tls_client(acme, acme_cert), _tls_client(beta, beta_cert)])
        )
        seen = []
        for key in (acme, beta, acme, beta):
            status, document, _ = await gw.token(key.assertion())
            record = server.last
            assert status == 200, (document, record.error_description)
            assert (record.auth_method, record.client_id) == ("tls_client_auth", key.client_id)
            assert record.form["client_id"] == key.client_id
            seen.append((record.peer_subject, record.peer_port))
        assert [subject for subject, _ in seen] == [acme_cert.subject, beta_cert.subject] * 2
        assert acme_cert.subject != beta_cert.subject
        # One pooled session per certificate: each client's connection is reused, never shared.
        (acme_port, beta_port) = {seen[0][1], seen[2][1]}, {seen[1][1], seen[3][1]}
        assert len(acme_port) == 1 and len(beta_port) == 1 and acme_port != beta_port
    finally:
        await server.stop()


async def test_tls_client_auth_wrong_certificate_is_a_misconfiguration(pki, gateway_factory):
    server = await _tls_as(pki, require_client_cert=True)
    try:
        acme = caller("acme")
        registered, presented = pki.client("acme"), pki.client("intruder")
        register_caller(server, acme, "tls_client_auth", tls_subject_dn=registered.subject)
        gw = await gateway_factory(_tls_config(server, pki, [_tls_client(acme, presented)]))
        await _expect_rejected_credentials(gw, server, acme)
        assert server.last.peer_subject == presented.subject
    finally:
        await server.stop()


async def test_clients_without_a_certificate_present_none(pki, gateway_factory, tmp_path):
    """The shared session never carries a client's certificate; certificate-less clients stay so."""
    server = await _tls_as(pki, require_client_cert=False)
    try:
        acme, beta = caller("acme"), caller("beta")
        acme_cert = pki.client("acme")
        register_caller(server, acme, "tls_client_auth", tls_subject_dn=acme_cert.subject)
        register_caller(server, beta, "client_secret_post", secret="beta-secret")
        beta_auth = {"method": "client_secret_post", "secret": secret_ref(tmp_path, "beta", "beta-secret")}
        clients = [_tls_client(acme, acme_cert), client_entry(beta, upstream={"client_auth": beta_auth})]
        gw = await gateway_factory(_tls_config(server, pki, clients))
        for key, subject in ((acme, acme_cert.subject), (beta, None)):
            status, _, _ = await gw.token(key.assertion())
            assert status == 200, server.last.error_description
            assert server.last.peer_subject == subject
    finally:
        await server.stop()


async def test_the_as_certificate_is_verified_on_certificate_sessions(pki, gateway_factory):
    """A client certificate does not switch server verification off: without the CA the AS is not trusted."""
    server = await _tls_as(pki, require_client_cert=True)
    try:
        acme = caller("acme")
        acme_cert = pki.client("acme")
        register_caller(server, acme, "tls_client_auth", tls_subject_dn=acme_cert.subject)
        config = _tls_config(server, pki, [_tls_client(acme, acme_cert)])
        del config["upstream"]["tls"]
        gw = await gateway_factory(config)
        status, document, _ = await gw.token(acme.assertion())
        assert (status, document["error"]) == (503, "temporarily_unavailable")
        assert server.records == []
    finally:
        await server.stop()


async def test_in_flight_cap_counts_every_certificate_session(pki, gateway_factory, tmp_path):
    """Stage 15: upstream.max_in_flight bounds what reaches the AS, whichever session carries it."""
    server = await _tls_as(pki, require_client_cert=False)
    try:
        server.delay = 0.5
        acme, beta = caller("acme"), caller("beta")
        acme_cert = pki.client("acme")
        register_caller(server, acme, "tls_client_auth", tls_subject_dn=acme_cert.subject)
        register_caller(server, beta, "client_secret_post", secret="beta-secret")
        beta_auth = {"method": "client_secret_post", "secret": secret_ref(tmp_path, "beta", "beta-secret")}
        config = _tls_config(
            server, pki, [_tls_client(acme, acme_cert), client_entry(beta, upstream={"client_auth": beta_auth})]
        )
        config["upstream"]["max_in_flight"] = 1
        gw = await gateway_factory(config)
        for first, second in ((acme, beta), (beta, acme)):
            seen = len(server.records)
            slow = asyncio.create_task(gw.token(first.assertion()))
            while len(server.records) == seen:  # the first request is at the AS now
                await asyncio.sleep(0.01)
            status, document, headers = await gw.token(second.assertion())
            assert (status, document["error"]) == (503, "temporarily_unavailable")
            assert "Retry-After" in headers
            assert (await slow)[0] == 200
            assert len(server.records) == seen + 1
    finally:
        await server.stop()


# -- check-config refuses inconsistent clients ---------------------------------------------------------------


def _check_config(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [BEARER_GATEWAY, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def _client_with(upstream: dict[str, Any], client_id: str = "acme") -> dict[str, Any]:
    return client_entry(caller(client_id), upstream=upstream)


def _inconsistent_cases(tmp_path: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any], str]]:
    """name -> (clients[0].upstream, gateway section, expected key path in the message)."""
    pki = TestCA(tmp_path / "pki")
    cert, other = pki.client("acme"), pki.client("other")
    _, gw_key = signing_key(tmp_path, "gw-1")
    _, client_pem = signing_key(tmp_path, "acme-upstream")
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    secret = secret_ref(tmp_path, "acme", "s")
    basic = {"method": "client_secret_basic", "secret": secret}
    at = "clients[0].upstream"
    return {
        "resign without gateway keys": (
            {"mode": "resign", "audience": "https://as.test", "client_auth": basic},
            {},
            f"{at}.mode",
        ),
        "resign without audience": ({"mode": "resign", "client_auth": basic}, {"keys": [gw_key]}, f"{at}.audience"),
        "resign without client authentication": (
            {"mode": "resign", "audience": "https://as.test"},
            {"keys": [gw_key]},
            f"{at}.client_auth.method",
        ),
        "basic without secret": ({"client_auth": {"method": "client_secret_basic"}}, {}, f"{at}.client_auth.secret"),
        "post without secret": ({"client_auth": {"method": "client_secret_post"}}, {}, f"{at}.client_auth.secret"),
        "private_key_jwt without a key": (
            {"client_auth": {"method": "private_key_jwt"}},
            {},
            f"{at}.client_auth.private_key_file",
        ),
        "private_key_jwt gateway key without gateway keys": (
            {"client_auth": {"method": "private_key_jwt", "use_gateway_key": True}},
            {},
            f"{at}.client_auth.use_gateway_key",
        ),
        "private_key_jwt with both keys": (
            {"client_auth": {"method": "private_key_jwt", "use_gateway_key": True, **client_pem}},
            {"keys": [gw_key]},
            f"{at}.client_auth.use_gateway_key",
        ),
        "private_key_jwt without alg": (
            {"client_auth": {"method": "private_key_jwt", "private_key_file": client_pem["private_key_file"]}},
            {},
            f"{at}.client_auth.alg",
        ),
        "private_key_jwt with a secret": (
            {"client_auth": {"method": "private_key_jwt", "secret": secret, **client_pem}},
            {},
            f"{at}.client_auth.secret",
        ),
        "private_key_jwt key file missing": (
            {"client_auth": {"method": "private_key_jwt", **client_pem, "private_key_file": str(tmp_path / "nope")}},
            {},
            f"{at}.client_auth.private_key_file",
        ),
        "private_key_jwt unreadable key": (
            {"client_auth": {"method": "private_key_jwt", **client_pem, "private_key_file": str(not_a_key)}},
            {},
            f"{at}.client_auth.private_key_file",
        ),
        "private_key_jwt key of the wrong type": (
            {"client_auth": {"method": "private_key_jwt", **client_pem, "alg": "RS256"}},
            {},
            f"{at}.client_auth.private_key_file",
        ),
        "tls_client_auth without a certificate": (
            {"client_auth": {"method": "tls_client_auth"}},
            {},
            f"{at}.client_auth",
        ),
        "tls_client_auth certificate file missing": (
            {
                "client_auth": {
                    "method": "tls_client_auth",
                    "cert_file": str(tmp_path / "no.crt"),
                    "key_file": str(cert.key_file),
                }
            },
            {},
            f"{at}.client_auth.cert_file",
        ),
        "tls_client_auth key not matching the certificate": (
            {
                "client_auth": {
                    "method": "tls_client_auth",
                    "cert_file": str(cert.cert_file),
                    "key_file": str(other.key_file),
                }
            },
            {},
            f"{at}.client_auth",
        ),
        "gateway key of the wrong type": (
            {"mode": "resign", "audience": "https://as.test", "client_auth": basic},
            {"keys": [{**gw_key, "alg": "EdDSA"}]},
            "gateway.keys[0]",
        ),
        "unknown client_auth key": (
            {"client_auth": {"method": "client_secret_basic", "secret": secret, "password": "x"}},
            {},
            f"{at}.client_auth.password",
        ),
    }


CASE_NAMES = [
    "resign without gateway keys",
    "resign without audience",
    "resign without client authentication",
    "basic without secret",
    "post without secret",
    "private_key_jwt without a key",
    "private_key_jwt gateway key without gateway keys",
    "private_key_jwt with both keys",
    "private_key_jwt without alg",
    "private_key_jwt with a secret",
    "private_key_jwt key file missing",
    "private_key_jwt unreadable key",
    "private_key_jwt key of the wrong type",
    "tls_client_auth without a certificate",
    "tls_client_auth certificate file missing",
    "tls_client_auth key not matching the certificate",
    "gateway key of the wrong type",
    "unknown client_auth key",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_check_config_refuses_inconsistent_client(tmp_path, name):
    upstream, gateway, key_path = _inconsistent_cases(tmp_path)[name]
    # The inconsistent client is the second one: the message must name its own index.
    upstream_key_path = key_path.replace("clients[0]", "clients[1]")
    clients = [_client_with({}, "fine"), _client_with(upstream)]
    config = base_config("https://as.test/token", gateway=gateway, clients=clients)
    result = _check_config(tmp_path, config)
    assert result.returncode == 1, result.stdout
    assert upstream_key_path in result.stderr, result.stderr
    assert result.stdout == ""


def test_check_config_refuses_tls_client_auth_over_plain_http(tmp_path):
    cert = TestCA(tmp_path / "pki").client("acme")
    auth = {"method": "tls_client_auth", "cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
    config = base_config("http://as.test/token", clients=[_client_with({"client_auth": auth})])
    result = _check_config(tmp_path, config)
    assert result.returncode == 1
    assert "clients[0].upstream.client_auth: method tls_client_auth needs an https upstream.token_url" in result.stderr


def test_check_config_accepts_every_method_and_masks_secrets(tmp_path):
    pki = TestCA(tmp_path / "pki")
    cert = pki.client("delta")
    _, gw_key = signing_key(tmp_path, "gw-1")
    _, client_pem = signing_key(tmp_path, "gamma-upstream", "RS256")
    secret_value = "do-not-print-this-secret"
    secret = secret_ref(tmp_path, "shared", secret_value)
    clients = [
        _client_with(
            {
                "mode": "resign",
                "audience": "https://as.test",
                "client_auth": {"method": "client_secret_basic", "secret": secret},
            },
            "alpha",
        ),
        _client_with({"client_auth": {"method": "client_secret_post", "secret": secret}}, "beta"),
        _client_with({"client_auth": {"method": "private_key_jwt", **client_pem}}, "gamma"),
        _client_with({"client_auth": {"method": "private_key_jwt", "use_gateway_key": True}}, "epsilon"),
        _client_with(
            {
                "client_auth": {
                    "method": "tls_client_auth",
                    "cert_file": str(cert.cert_file),
                    "key_file": str(cert.key_file),
                }
            },
            "delta",
        ),
        _client_with({"client_auth": {"method": "none"}}, "zeta"),
    ]
    result = _check_config(tmp_path, base_config("https://as.test/token", gateway={"keys": [gw_key]}, clients=clients))
    assert result.returncode == 0, result.stderr
    assert secret_value not in result.stdout and secret_value not in result.stderr
    effective = yaml.safe_load(result.stdout)
    assert [c["upstream"]["client_auth"]["method"] for c in effective["clients"]] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "private_key_jwt",
        "tls_client_auth",
        "none",
    ]
    assert effective["clients"][0]["upstream"]["lifetime"] == "60s"
