"""Issue 14: Ory Hydra v2.3.0 end to end. An unmodified Hydra (`serve all --dev`, DSN=memory) serves the
CAMARA JWT-bearer flow behind the gateway in `forward` mode: each API consumer is a trusted JWT-grant
issuer at Hydra (its own key, its own scopes), Hydra's advertised token URL is the gateway's, and the
gateway injects the client authentication Hydra requires. Requests reaching Hydra are counted from its
JSON request log (one "completed handling request" line per request, written before the response) and
cross-checked with Hydra's own Prometheus counter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.jose.signing import generate_private_key_pem, load_signing_key, mint_assertion
from tests.e2e import hydra_proc as hp
from tests.e2e.conftest import Caller, _caller, _wait

# The first run on a machine builds Hydra (about 4 minutes) inside the fixture unless .ci/run already did.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"
TRUSTED_SCOPES = ("dpv:FraudPreventionAndDetection", "sim-swap:check")  # per caller, at Hydra
SUB = "tel:+34600000001"
PKJWT_CLIENT_ID = "camara-app-pkjwt"
WRONG_SECRET = "deliberately-wrong-secret"  # throwaway: the misconfiguration test


@dataclass
class HydraE2E:
    hydra: hp.HydraProcess
    gateway_url: str
    admin_url: str
    callers: dict[str, Caller]

    @property
    def token_url(self) -> str:
        return self.gateway_url + hp.TOKEN_PATH


def _require_tools() -> None:
    why = hp.tool_status()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run the Hydra tests; .ci/run installs Go)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def hx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HydraE2E]:
    _require_tools()
    work: Path = tmp_path_factory.mktemp("hydra-e2e")
    port, admin = hp.free_port(), hp.free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    # Hydra advertises (and accepts as assertion aud) the gateway's token URL: forward mode works as is.
    hydra = hp.HydraProcess(token_url=gateway_url + hp.TOKEN_PATH)
    hydra.start()
    print(f"\nHydra ready in {hydra.startup_seconds:.2f}s (install {hydra.install_seconds:.2f}s)")
    callers = {name: _caller(name) for name in ("acme-secret", "acme-pkjwt", "acme-misconfigured")}
    # The Hydra way: an OAuth 2.0 client for the injected authentication, one trusted issuer per caller.
    hydra.create_client(hp.CLIENT_ID, hp.CLIENT_SECRET)
    hydra.create_client(PKJWT_CLIENT_ID, auth_method="private_key_jwt", signing_alg="ES256",
                        jwks_uri=gateway_url + "/.well-known/jwks.json")
    for caller in callers.values():
        hydra.trust_issuer(caller.client_id, caller.key.public_jwk(), scope=TRUSTED_SCOPES)

    gw_key = work / "gw-1.pem"
    gw_key.write_bytes(generate_private_key_pem("ES256"))
    forward = {"mode": "forward", "scope_parameter": True}
    basic = {"method": "client_secret_basic", "client_id": hp.CLIENT_ID}

    def client(caller: Caller, auth: dict[str, object]) -> dict[str, object]:
        return {"client_id": caller.client_id, "keys": {"jwks": {"keys": [caller.key.public_jwk()]}},
                "upstream": {**forward, "client_auth": auth}}

    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstream": {"token_url": hydra.token_url},
        "profile": {"audiences": [gateway_url + hp.TOKEN_PATH]},
        "gateway": {"issuer": gateway_url, "keys": [{"kid": "gw-1", "alg": "ES256", "private_key_file": str(gw_key)}]},
        "clients": [
            client(callers["acme-secret"], {**basic, "secret": "${E2E_HYDRA_SECRET}"}),
            # private_key_jwt signed with the gateway key; Hydra reads the key from the gateway's JWKS.
            client(callers["acme-pkjwt"], {"method": "private_key_jwt", "client_id": PKJWT_CLIENT_ID,
                                           "use_gateway_key": True}),
            client(callers["acme-misconfigured"], {**basic, "secret": "${E2E_WRONG_SECRET}"}),
        ],
    }
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "E2E_HYDRA_SECRET": hp.CLIENT_SECRET, "E2E_WRONG_SECRET": WRONG_SECRET}
    log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(f"http://127.0.0.1:{admin}/healthz", 30)
        yield HydraE2E(hydra, gateway_url, f"http://127.0.0.1:{admin}", callers)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        log.close()
        print(f"POST /oauth2/token requests that reached Hydra in this module: {hydra.token_requests_seen()}")
        hydra.stop()


def camara_assertion(hx: HydraE2E, caller: str, **overrides: Any) -> str:
    """The request a CAMARA client sends: iss = its client id, aud = the gateway's token URL."""
    key = overrides.pop("key", hx.callers[caller].key)
    args: dict[str, Any] = {"iss": caller, "sub": SUB, "aud": hx.token_url, "scope": SCOPE}
    args.update(overrides)
    return mint_assertion(key, **args)


def post(url: str, assertion: str, headers: dict[str, str] | None = None, **extra: str) -> tuple[int, Any]:
    # No client authentication at all: the assertion is the client authentication (CAMARA).
    return hp.post_form(url, {"grant_type": hp.GRANT_TYPE, "assertion": assertion, **extra}, headers)


@pytest.mark.parametrize(("caller", "as_client"), [("acme-secret", hp.CLIENT_ID), ("acme-pkjwt", PKJWT_CLIENT_ID)])
def test_camara_request_gets_a_hydra_token(hx: HydraE2E, caller: str, as_client: str):
    before = hx.hydra.token_requests_seen()
    status, body = post(hx.token_url, camara_assertion(hx, caller))
    assert status == 200, body
    assert body["token_type"].lower() == "bearer" and "refresh_token" not in body
    assert set(body["scope"].split()) == set(SCOPE.split())
    token = hx.hydra.introspect(body["access_token"])
    assert token["active"] is True
    assert token["client_id"] == as_client  # the client the gateway authenticated as
    assert token["sub"] == SUB               # Hydra keeps the CAMARA subject
    assert set(token["scope"].split()) == set(SCOPE.split())
    assert hx.hydra.token_requests_seen() == before + 1


def test_same_request_straight_to_hydra_is_refused(hx: HydraE2E):
    """The gap the gateway closes: Hydra requires client authentication for the jwt-bearer grant."""
    before = hx.hydra.token_requests_seen()
    status, body = post(hx.hydra.token_url, camara_assertion(hx, "acme-secret"))
    assert (status, body["error"]) == (400, "invalid_request")
    assert "Client credentials missing or malformed" in body["error_description"]
    # Naming the client without proving it (what a CAMARA client could add) is 401 invalid_client.
    status, body = post(hx.hydra.token_url, camara_assertion(hx, "acme-secret"), client_id=hp.CLIENT_ID)
    assert (status, body["error"]) == (401, "invalid_client")
    assert hx.hydra.token_requests_seen() == before + 2


def test_rejected_assertions_never_reach_hydra(hx: HydraE2E):
    forger = load_signing_key(generate_private_key_pem("ES256"), alg="ES256", kid="acme-secret-1", source="forger")
    now = int(time.time())
    replayed = camara_assertion(hx, "acme-secret")
    assert post(hx.token_url, replayed)[0] == 200
    cases = [  # name, assertion, gateway answer, what Hydra says to the same assertion (with client auth)
        ("replayed", replayed, (400, "invalid_grant"), (400, "jti_known")),
        ("expired", camara_assertion(hx, "acme-secret", now=now - 400, lifetime=300),
         (400, "invalid_grant"), (400, "invalid_grant")),
        ("bad signature", camara_assertion(hx, "acme-secret", key=forger), (401, "invalid_client"), (400, "invalid_grant")),
        ("unknown iss", camara_assertion(hx, "acme-secret", iss="nobody"), (401, "invalid_client"), (400, "invalid_grant")),
        ("sub not a CAMARA format", camara_assertion(hx, "acme-secret", sub="alice"), (400, "invalid_grant"), (200, None)),
    ]
    before, counted = hx.hydra.token_requests_seen(), hx.hydra.token_requests_metric()
    for name, assertion, expected, _ in cases:
        status, body = post(hx.token_url, assertion)
        assert (status, body["error"]) == expected, name
    # None of them reached Hydra: neither its request log nor its own request counter moved.
    assert (hx.hydra.token_requests_seen(), hx.hydra.token_requests_metric()) == (before, counted)
    # For the record (docs/implementers-guide.md): Hydra's own answers to the same assertions.
    secret = hp.basic(hp.CLIENT_ID, hp.CLIENT_SECRET)
    for name, assertion, _, hydra_says in cases:
        status, body = post(hx.hydra.token_url, assertion, secret, scope=SCOPE)
        assert (status, body.get("error")) == hydra_says, (name, body)
    assert hx.hydra.token_requests_seen() == before + len(cases)
    assert hx.hydra.token_requests_metric() == counted + len(cases)


def test_hydras_own_refusals_pass_through(hx: HydraE2E):
    """What only Hydra knows goes back to the caller as Hydra said it."""
    before = hx.hydra.token_requests_seen()
    # A scope outside the caller's trust relationship (Hydra's per-issuer scope list).
    status, body = post(hx.token_url, camara_assertion(hx, "acme-secret", scope="sim-swap:retrieve-date"))
    assert (status, body["error"]) == (400, "invalid_scope")
    assert "not allowed to request scope 'sim-swap:retrieve-date'" in body["error_description"]
    # Hydra keeps one jti namespace for all issuers; the gateway keys replay by (iss, jti). Another
    # caller's already used jti passes the gateway and Hydra refuses it with its own error code.
    jti = "shared-jti-" + str(time.time_ns())
    assert post(hx.token_url, camara_assertion(hx, "acme-secret", jti=jti))[0] == 200
    status, body = post(hx.token_url, camara_assertion(hx, "acme-pkjwt", jti=jti))
    assert (status, body) == (400, {"error": "jti_known", "error_description": "The jti was already used."})
    assert hx.hydra.token_requests_seen() == before + 3


def test_wrong_client_secret_in_gateway_config_is_502(hx: HydraE2E):
    before = hx.hydra.token_requests_seen()
    status, body = post(hx.token_url, camara_assertion(hx, "acme-misconfigured"))
    assert (status, body["error"]) == (502, "server_error")
    assert hx.hydra.token_requests_seen() == before + 1
    assert hx.hydra.requests()[-1]["http_response"]["status"] == 401  # Hydra's answer to the gateway
    with urllib.request.urlopen(hx.admin_url + "/metrics") as response:
        text = response.read().decode()
    assert 'bearer_gateway_upstream_credential_rejections_total{client="acme-misconfigured"} 1.0' in text
