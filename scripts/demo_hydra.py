"""`make demo AS=hydra`: a CAMARA JWT-bearer request answered by an unmodified Ory Hydra v2.3.0 through
the gateway (forward mode). Run from the repository root (scripts/demo.sh does)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo import ADMIN, BIN, SCOPE, STATE, SUB, TOKEN_URL, client_key, port_free, say, wait_http  # noqa: E402

from gateway.jose.signing import load_signing_key  # noqa: E402
from tests.e2e import hydra_proc as hp  # noqa: E402

CONFIG = ROOT / "config" / "demo-hydra.yaml"
TRUSTED_SCOPES = ("dpv:FraudPreventionAndDetection", "sim-swap:check")


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    why = hp.tool_status()
    if why:
        print(why, file=sys.stderr)
        return 1
    busy = [p for p in (8080, 9100, 4444, 4445) if not port_free(p)]
    if busy:
        print(f"ports {busy} on 127.0.0.1 are in use; the demo needs 8080, 9100, 4444 and 4445", file=sys.stderr)
        return 1
    STATE.mkdir(exist_ok=True)
    demo_key = client_key("demo-app")
    public_jwk = load_signing_key(demo_key.read_bytes(), alg="ES256", kid="demo-app", source=str(demo_key)).public_jwk()

    say("Starting Ory Hydra v2.3.0 on 127.0.0.1:4444 (the first run builds it with Go, a few minutes)")
    hydra = hp.HydraProcess(token_url=TOKEN_URL, public_port=4444, admin_port=4445)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        hydra.start()
        print(f"Hydra ready in {hydra.startup_seconds:.1f}s; it advertises the gateway's token URL {TOKEN_URL}")

        say("Configuring Hydra the Hydra way (admin API on 127.0.0.1:4445)")
        hydra.create_client(hp.CLIENT_ID, hp.CLIENT_SECRET)
        print(f"POST /admin/clients  client_id={hp.CLIENT_ID}, grant_types=[jwt-bearer], client_secret_basic")
        hydra.trust_issuer("demo-app", public_jwk, scope=TRUSTED_SCOPES)
        print("POST /admin/trust/grants/jwt-bearer/issuers  issuer=demo-app, allow_any_subject,"
              f" scope={list(TRUSTED_SCOPES)}")

        say("Starting the gateway on 127.0.0.1:8080 (admin 127.0.0.1:9100) with config/demo-hydra.yaml")
        env = {**os.environ, "DEMO_HYDRA_SECRET": hp.CLIENT_SECRET}
        with open(STATE / "audit.log", "ab") as audit, open(STATE / "gateway.log", "ab") as log:
            gateway = subprocess.Popen([BIN / "bearer-gateway", "run", "-c", CONFIG], cwd=ROOT, env=env,
                                       stdout=audit, stderr=log)
        wait_http(ADMIN + "/healthz", 30)

        say("A CAMARA client mints its JWT-bearer assertion (iss = its client_id, aud = the gateway)")
        mint = [str(BIN / "bearer-gateway"), "assertion", "--client-key", str(demo_key.relative_to(ROOT)),
                "--iss", "demo-app", "--sub", SUB, "--aud", TOKEN_URL, "--scope", SCOPE]
        print("$ " + shlex.join(mint))
        assertion = subprocess.run(mint, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()

        say("It asks the gateway for a token with no client authentication at all (the CAMARA way)")
        form = {"grant_type": hp.GRANT_TYPE, "assertion": assertion}
        status, body = hp.post_form(TOKEN_URL, form)
        print(f"HTTP {status}")
        print(json.dumps(body, indent=2))
        if status != 200 or not isinstance(body, dict):
            print("\nno token: see .demo/gateway.log and .demo/audit.log", file=sys.stderr)
            return 1
        info = hydra.introspect(body["access_token"])
        print("Hydra's introspection of that token:", json.dumps(
            {k: info.get(k) for k in ("active", "client_id", "sub", "scope", "token_use")}, indent=2))

        say("The same assertion again: the gateway refuses the replay; Hydra never sees it")
        seen = hydra.token_requests_seen()
        status, body = hp.post_form(TOKEN_URL, form)
        print(f"HTTP {status} {json.dumps(body)}  (requests that reached Hydra: +{hydra.token_requests_seen() - seen})")

        say("Sent straight to Hydra, the CAMARA request is refused: Hydra requires client authentication")
        fresh = subprocess.run(mint, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        status, body = hp.post_form(hydra.token_url, {"grant_type": hp.GRANT_TYPE, "assertion": fresh})
        print(f"HTTP {status} {json.dumps(body)}")

        if oneshot:
            return 0
        say("Try it yourself (Ctrl-C stops Hydra and the gateway)")
        print(f"""  A=$({shlex.join(mint)})
  curl -s {TOKEN_URL} -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer -d "assertion=$A"
  curl -s {ADMIN}/metrics | grep bearer_gateway_requests_total
  curl -s {hydra.admin_url}/admin/trust/grants/jwt-bearer/issuers     # Hydra's trust relationships""")
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
        hydra.stop()


if __name__ == "__main__":
    raise SystemExit(main())
