"""`bearer-gateway assertion` mints a CAMARA assertion the gateway's own checks accept."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gateway.jose.jws import parse_compact
from gateway.jose.signing import generate_private_key_pem, load_signing_key


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_assertion_command(tmp_path, alg):
    pem = generate_private_key_pem(alg)
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(pem)
    args = ["--client-key", str(key_file), "--iss", "acme-app", "--sub", "tel:+34600000001",
            "--aud", "https://gw.example/oauth2/token", "--lifetime", "120"]
    if alg == "PS256":
        args += ["--alg", "PS256"]
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "assertion", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    jws = parse_compact(token, max_header_bytes=1024, max_payload_bytes=2048)
    assert jws.header["alg"] == alg and jws.header["kid"] == "acme-app"
    claims = jws.payload
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("acme-app", "tel:+34600000001",
                                                              "https://gw.example/oauth2/token")
    assert claims["exp"] - claims["iat"] == 120 and abs(claims["iat"] - time.time()) < 30
    assert claims["scope"] == "dpv:FraudPreventionAndDetection sim-swap:check" and claims["jti"]
    public = load_signing_key(pem, alg=alg, kid="acme-app", source="t").verification_key()
    assert public.verify(jws.signing_input, jws.signature)


def test_assertion_command_refuses_a_bad_key(tmp_path):
    key_file = tmp_path / "bad.pem"
    key_file.write_text("not a key")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "assertion", "--client-key", str(key_file),
                             "--iss", "a", "--sub", "tel:+34600000001", "--aud", "x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
