"""`bearer-gateway keygen`: a private key file the gateway loads, and its public JWK on stdout."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.jose.signing import load_signing_key

BEARER_GATEWAY = str(Path(sys.executable).with_name("bearer-gateway"))
ALGORITHMS = ["ES256", "RS256", "PS256", "EdDSA"]
# RFC 7518 §6.2.2, §6.3.2 and RFC 8037 §2: members that only a private JWK carries.
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
EXPECTED_KEY = {
    "ES256": {"kty": "EC", "crv": "P-256"},
    "RS256": {"kty": "RSA"},
    "PS256": {"kty": "RSA"},
    "EdDSA": {"kty": "OKP", "crv": "Ed25519"},
}

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BEARER_GATEWAY, "keygen", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_keygen_writes_a_loadable_key_and_prints_its_public_jwk(tmp_path: Path, alg: str) -> None:
    out = tmp_path / "gw.pem"
    result = keygen("--alg", alg, "--kid", "gw-1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (jwk,) = document["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == ("gw-1", alg, "sig")
    assert EXPECTED_KEY[alg].items() <= jwk.items()
    assert not PRIVATE_MEMBERS & set(jwk)
    # The private key is for the owner only.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pem = out.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pem.decode() not in result.stdout + result.stderr
    # The gateway loads it, and the printed JWK is its public half: it verifies what the key signs.
    key = load_signing_key(pem, alg=alg, kid="gw-1", source=str(out))
    assert key.public_jwk() == jwk
    token = key.sign({"iss": "https://gateway.test", "sub": "tel:+34600000001"})
    claims: dict[str, Any] = jwt.decode(token, jwt.PyJWK(jwk, algorithm=alg), algorithms=[alg])
    assert claims["iss"] == "https://gateway.test"


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "gw.pem"
    out.write_bytes(b"keep me")
    result = keygen("--alg", "ES256", "--kid", "gw-1", "--out", str(out))
    assert result.returncode == 1
    assert "--force" in result.stderr and result.stdout == ""
    assert out.read_bytes() == b"keep me"


def test_keygen_force_overwrites_and_restricts_the_mode(tmp_path: Path) -> None:
    out = tmp_path / "gw.pem"
    out.write_bytes(b"old")
    out.chmod(0o644)
    result = keygen("--alg", "RS256", "--kid", "gw-2", "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_signing_key(out.read_bytes(), alg="RS256", kid="gw-2", source=str(out))
    assert json.loads(result.stdout)["keys"] == [key.public_jwk()]


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384"])
def test_keygen_refuses_other_algorithms(tmp_path: Path, alg: str) -> None:
    out = tmp_path / "gw.pem"
    result = keygen("--alg", alg, "--kid", "gw-1", "--out", str(out))
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert not out.exists()


def test_keygen_keys_are_accepted_as_gateway_keys_by_check_config(tmp_path: Path) -> None:
    keys = []
    for i, alg in enumerate(ALGORITHMS):
        out = tmp_path / f"gw-{i}.pem"
        assert keygen("--alg", alg, "--kid", f"gw-{i}", "--out", str(out)).returncode == 0
        keys.append({"kid": f"gw-{i}", "alg": alg, "private_key_file": str(out)})
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"upstream": {"token_url": "https://as.test/token"}, "gateway": {"keys": keys}}))
    result = subprocess.run(
        [BEARER_GATEWAY, "check-config", "-c", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [k["kid"] for k in yaml.safe_load(result.stdout)["gateway"]["keys"]] == ["gw-0", "gw-1", "gw-2", "gw-3"]
