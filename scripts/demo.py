"""The demo behind `make demo`: a CAMARA JWT-bearer request answered by an unmodified Keycloak
through the gateway. Run from the repository root (scripts/demo.sh does)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.jose.signing import generate_private_key_pem, load_signing_key  # noqa: E402
from tests.e2e import keycloak_proc as kcp  # noqa: E402

STATE = ROOT / ".demo"
CONFIG = ROOT / "config" / "demo.yaml"
GATEWAY = "http://127.0.0.1:8080"
ADMIN = "http://127.0.0.1:9100"
TOKEN_URL = GATEWAY + "/oauth2/token"
BIN = ROOT / ".venv" / "bin"
SUB = "tel:+34600000001"
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def client_key(name: str) -> Path:
    """A demo API consumer's private key and the public JWKS the gateway is configured with."""
    pem_path = STATE / f"{name}.pem"
    if not pem_path.exists():
        pem_path.write_bytes(generate_private_key_pem("ES256"))
        pem_path.chmod(0o600)
    key = load_signing_key(pem_path.read_bytes(), alg="ES256", kid=name, source=str(pem_path))
    (STATE / f"{name}.jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}, indent=2))
    return pem_path


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def claims(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def request_token(assertion: str) -> tuple[int, object]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    return kcp.KeycloakProcess.post_form(TOKEN_URL, form)


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    why = kcp.tool_status()
    if why:
        print(why, file=sys.stderr)
        return 1
    busy = [p for p in (8080, 9100, 8081, 9001) if not port_free(p)]
    if busy:
        print(f"ports {busy} on 127.0.0.1 are in use; the demo needs 8080, 9100, 8081 and 9001", file=sys.stderr)
        return 1
    STATE.mkdir(exist_ok=True)
    gw_key = STATE / "gw-1.pem"
    if not gw_key.exists():
        subprocess.run([BIN / "bearer-gateway", "keygen", "--alg", "ES256", "--kid", "demo-gw-1", "--out", gw_key],
                       check=True, stdout=subprocess.DEVNULL)
    demo_key = client_key("demo-app")
    client_key("demo-app-pkjwt")

    say("Starting Keycloak 26.7.3 on 127.0.0.1:8081 (the first run downloads and builds it with Maven)")
    keycloak = kcp.KeycloakProcess(gateway_issuer=GATEWAY, http_port=8081, mgmt_port=9001)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        keycloak.start()
        print(f"Keycloak ready in {keycloak.startup_seconds:.1f}s: realm {keycloak.issuer}")

        say("Starting the gateway on 127.0.0.1:8080 (admin 127.0.0.1:9100) with config/demo.yaml")
        env = {**os.environ, "DEMO_KC_SECRET": kcp.SECRET_CLIENT_SECRET}
        with open(STATE / "audit.log", "ab") as audit, open(STATE / "gateway.log", "ab") as log:
            gateway = subprocess.Popen([BIN / "bearer-gateway", "run", "-c", CONFIG], cwd=ROOT, env=env,
                                       stdout=audit, stderr=log)
        wait_http(ADMIN + "/healthz", 30)
        with urllib.request.urlopen(GATEWAY + "/.well-known/jwks.json") as response:
            print("gateway up; its public keys:", response.read().decode())

        say("A CAMARA client mints its JWT-bearer assertion (iss = its client_id, aud = the gateway)")
        mint = [str(BIN / "bearer-gateway"), "assertion", "--client-key", str(demo_key.relative_to(ROOT)),
                "--iss", "demo-app", "--sub", SUB, "--aud", TOKEN_URL, "--scope", SCOPE]
        print("$ " + shlex.join(mint))
        assertion = subprocess.run(mint, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        print(json.dumps(claims(assertion), indent=2))

        say("It asks for a token with no client authentication at all (the CAMARA way)")
        print(f"$ curl -s {TOKEN_URL} \\\n    -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer \\\n"
              f"    -d assertion={assertion[:40]}...")
        status, body = request_token(assertion)
        print(f"HTTP {status}")
        print(json.dumps(body, indent=2))
        if status != 200 or not isinstance(body, dict):
            print("\nno token: see .demo/gateway.log and .demo/audit.log", file=sys.stderr)
            return 1
        token = claims(body["access_token"])
        print("access token claims:", json.dumps({k: token.get(k) for k in
              ("iss", "azp", "preferred_username", "scope", "exp")}, indent=2))

        say("The same assertion again: the gateway refuses the replay; Keycloak never sees it")
        status, body = request_token(assertion)
        print(f"HTTP {status} {json.dumps(body)}")

        say("Sent straight to Keycloak, the CAMARA request is refused: the gap the gateway closes")
        status, body = kcp.KeycloakProcess.post_form(keycloak.token_url, {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": subprocess.run(mint, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()})
        print(f"HTTP {status} {json.dumps(body)}")

        if oneshot:
            return 0
        say("Try it yourself (Ctrl-C stops Keycloak and the gateway)")
        print(f"""  A=$({shlex.join(mint)})
  curl -s {TOKEN_URL} -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer -d "assertion=$A"
  curl -s {ADMIN}/metrics | grep bearer_gateway_requests_total
  tail -f .demo/audit.log                  # one JSON line per token request
  Second client (federated-jwt, no secret in the gateway): --iss demo-app-pkjwt --client-key .demo/demo-app-pkjwt.pem
  Keycloak admin console: {keycloak.base_url}/admin (admin / admin)""")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")
        return 0
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=15)
        keycloak.stop()


if __name__ == "__main__":
    raise SystemExit(main())
