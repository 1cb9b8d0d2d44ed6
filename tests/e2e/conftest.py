"""One real Keycloak and one real gateway process for the whole e2e session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key
from tests.e2e import keycloak_proc as kcp

GATEWAY_AUDIENCE_PATH = "/oauth2/token"
WRONG_SECRET = "deliberately-wrong-secret"  # throwaway: the misconfiguration test


@dataclass
class Caller:
    """A CAMARA API consumer: its client id at the gateway and its own signing key."""

    client_id: str
    key: SigningKey


@dataclass
class E2E:
    keycloak: kcp.KeycloakProcess
    gateway_url: str
    admin_url: str
    audience: str
    callers: dict[str, Caller]
    process: subprocess.Popen[bytes]

    @property
    def token_url(self) -> str:
        return self.gateway_url + GATEWAY_AUDIENCE_PATH


def _require_tools() -> None:
    why = kcp.tool_status()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run the Keycloak tests; .ci/run installs Java and Maven)")
    pytest.skip(why)


def _caller(client_id: str) -> Caller:
    pem = generate_private_key_pem("ES256")
    return Caller(client_id, load_signing_key(pem, alg="ES256", kid=f"{client_id}-1", source=client_id))


def _wait(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    _require_tools()
    work: Path = tmp_path_factory.mktemp("e2e")
    port, admin = kcp.free_port(), kcp.free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    keycloak = kcp.KeycloakProcess(gateway_issuer=gateway_url)
    keycloak.start()
    print(f"\nKeycloak ready in {keycloak.startup_seconds:.1f}s (install {keycloak.install_seconds:.1f}s)")

    gw_key = work / "gw-1.pem"
    gw_key.write_bytes(generate_private_key_pem("ES256"))
    callers = {name: _caller(name) for name in ("acme-secret", "acme-pkjwt", "acme-misconfigured")}
    resign = {"mode": "resign", "audience": keycloak.issuer, "scope_parameter": True}
    basic = {"method": "client_secret_basic", "client_id": kcp.SECRET_CLIENT_ID}

    def client(caller: Caller, auth: dict[str, object]) -> dict[str, object]:
        return {"client_id": caller.client_id, "keys": {"jwks": {"keys": [caller.key.public_jwk()]}},
                "upstream": {**resign, "client_auth": auth}}

    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstream": {"token_url": keycloak.token_url},
        "profile": {"audiences": [gateway_url + GATEWAY_AUDIENCE_PATH]},
        "gateway": {"issuer": gateway_url, "keys": [{"kid": "gw-1", "alg": "ES256", "private_key_file": str(gw_key)}]},
        "clients": [
            client(callers["acme-secret"], {**basic, "secret": "${E2E_KC_SECRET}"}),
            # federated-jwt: a client assertion signed with the gateway key, aud = the realm issuer.
            client(callers["acme-pkjwt"], {"method": "private_key_jwt", "client_id": kcp.PKJWT_CLIENT_ID,
                                           "use_gateway_key": True, "assertion_issuer": "gateway",
                                           "audience": keycloak.issuer}),
            client(callers["acme-misconfigured"], {**basic, "secret": "${E2E_WRONG_SECRET}"}),
        ],
    }
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "E2E_KC_SECRET": kcp.SECRET_CLIENT_SECRET, "E2E_WRONG_SECRET": WRONG_SECRET}
    log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(f"http://127.0.0.1:{admin}/healthz", 30)
        yield E2E(keycloak, gateway_url, f"http://127.0.0.1:{admin}", gateway_url + GATEWAY_AUDIENCE_PATH,
                  callers, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        log.close()
        keycloak.stop()
        audit = [json.loads(line) for line in (work / "gateway.log").read_text().splitlines() if line.startswith("{")]
        print(f"gateway audit lines: {len(audit)}")
