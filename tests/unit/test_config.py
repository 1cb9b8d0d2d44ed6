"""The YAML contract: defaults, parsing of durations/rates/secrets, and refusals naming the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, load_config
from gateway.config.types import Rate, parse_duration, parse_rate

MINIMAL = "upstream: {token_url: http://127.0.0.1:8081/token}\n"
CLIENT = """
profile: {audiences: [https://gw.example/oauth2/token]}
clients:
  - client_id: acme
    keys: {jwks: {keys: []}}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))  # the file is named
    return message


def test_minimal_file_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.limits.max_body_bytes == 8192
    assert config.limits.read_timeout == 5.0
    assert config.profile.max_lifetime == 300.0
    assert config.profile.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert config.profile.errors == "implicit-client-auth"
    assert config.rate_limits.per_ip is not None and config.rate_limits.per_ip.rate == Rate(50, 1.0)
    assert config.rate_limits.global_ is not None and config.rate_limits.global_.burst == 4000
    assert config.passthrough.other_grants == "forward" and config.passthrough.other_paths == "deny"
    assert config.state.redis.timeout == pytest.approx(0.05)


def test_config_objects_are_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError):
        config.limits.max_body_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize(("text", "value"), [("300ms", 0.3), ("5s", 5.0), ("2m", 120.0), ("1.5s", 1.5), ("1h", 3600.0)])
def test_durations(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "5 s", "-1s", "5sec", "", "s", "1d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rates():
    assert parse_rate("50/s") == Rate(50, 1.0)
    assert parse_rate("600/m").per_second == pytest.approx(10.0)
    for bad in ("50", "0/s", "50/d", "x/s", "-5/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


BROKEN = [
    ("unknown top-level key", MINIMAL + "listner: {port: 1}\n", "listner", "unknown key"),
    ("unknown nested key", MINIMAL + "limits: {max_body: 10}\n", "limits.max_body", "unknown key"),
    ("bad duration", MINIMAL + "limits: {read_timeout: 5}\n", "limits.read_timeout", "duration"),
    ("bad duration unit", "upstream: {token_url: http://x/t, timeouts: {total: 5x}}\n",
     "upstream.timeouts.total", "duration"),
    ("bad rate", MINIMAL + "rate_limits: {per_ip: {rate: 50/day, burst: 1}}\n", "rate_limits.per_ip.rate", "rate"),
    ("wrong type", MINIMAL + "limits: {max_form_params: many}\n", "limits.max_form_params", "integer"),
    ("out of range", MINIMAL + "limits: {max_body_bytes: 10}\n", "limits.max_body_bytes", "greater than or equal"),
    ("missing upstream", "workers: 1\n", "upstream", "required key is missing"),
    ("bad enum", MINIMAL + "profile: {errors: strict}\n", "profile.errors", "'implicit-client-auth' or 'rfc7523'"),
    ("none algorithm", MINIMAL + "profile: {algorithms: [ES256, none]}\n", "profile.algorithms[1]", "ES256"),
    ("HS256 algorithm", MINIMAL + "profile: {algorithms: [HS256]}\n", "profile.algorithms[0]", "RS256"),
    ("missing secret env var",
     MINIMAL + CLIENT + "    upstream: {client_auth: {method: client_secret_basic, secret: '${NO_SUCH_VAR_XYZ}'}}\n",
     "clients[0].upstream.client_auth.secret", "NO_SUCH_VAR_XYZ is not set"),
    ("literal secret", MINIMAL + CLIENT + "    upstream: {client_auth: {method: client_secret_post, secret: hunter2}}\n",
     "clients[0].upstream.client_auth.secret", "secret reference"),
    ("bad client auth method", MINIMAL + CLIENT + "    upstream: {client_auth: {method: magic}}\n",
     "clients[0].upstream.client_auth.method", "client_secret_basic"),
    ("two key sources", MINIMAL + CLIENT.replace("{jwks: {keys: []}}", "{jwks: {keys: []}, jwks_file: /x}"),
     "clients[0].keys", "exactly one of"),
    ("resign without gateway keys", MINIMAL + CLIENT + "    upstream: {mode: resign, audience: http://as}\n",
     "clients[0].upstream.mode", "gateway.keys"),
    ("client alg outside profile", MINIMAL + CLIENT + "    algorithms: [ES256]\nprofile: {algorithms: [RS256]}\n",
     "", ""),  # duplicate top-level key 'profile' -> YAML refusal
    ("clients without audiences", MINIMAL + "clients: [{client_id: a, keys: {jwks: {keys: []}}}]\n",
     "profile.audiences", "at least one"),
    ("workers with memory state", MINIMAL + "workers: 4\n", "state.backend", "redis"),
    ("duplicate client", MINIMAL + CLIENT + "  - client_id: acme\n    keys: {jwks: {keys: []}}\n", "clients",
     "appears twice"),
    ("missing key file", MINIMAL + CLIENT.replace("{jwks: {keys: []}}", "{jwks_file: /nonexistent/jwks.json}"),
     "clients[0].keys.jwks_file", "does not exist"),
    ("not a mapping", "- just\n- a list\n", "(top level)", "mapping"),
    ("zero jwks ttl", MINIMAL + CLIENT.replace("{jwks: {keys: []}}", "{jwks_uri: 'http://127.0.0.1:1/jwks', ttl: 0s}"),
     "clients[0].keys.ttl", "expected a duration > 0s, got 0s"),
    ("zero jwks fetch timeout",
     MINIMAL + CLIENT.replace("{jwks: {keys: []}}", "{jwks_uri: 'http://127.0.0.1:1/jwks', fetch_timeout: 0ms}"),
     "clients[0].keys.fetch_timeout", "expected a duration > 0s, got 0s"),
    ("private_key_jwt with a secret",
     MINIMAL + CLIENT + "    upstream: {client_auth: {method: private_key_jwt, use_gateway_key: true, secret: '${HOME}'}}\n",
     "clients[0].upstream.client_auth.secret", "does not use a secret"),
]


@pytest.mark.parametrize(("name", "text", "path", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_name_the_key_path(tmp_path, name, text, path, expected, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_XYZ", raising=False)
    message = refusal(tmp_path, text)
    if name == "client alg outside profile":
        assert "duplicate key 'profile'" in message
        return
    assert f": {path}: " in message, message
    assert expected in message, message


def test_duplicate_yaml_keys_refused(tmp_path):
    message = refusal(tmp_path, MINIMAL + "limits: {max_body_bytes: 9000}\nlimits: {max_body_bytes: 10000}\n")
    assert "duplicate key 'limits'" in message and "line 3" in message


def test_secret_from_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("from-a-file\n")
    text = MINIMAL + CLIENT + f"    upstream: {{client_auth: {{method: client_secret_post, secret: {{file: {secret}}}}}}}\n"
    config = load_config(write(tmp_path, text))
    assert config.clients[0].upstream.client_auth.secret.get() == "from-a-file"  # type: ignore[union-attr]
    assert "from-a-file" not in repr(config)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_check_config_masks_secrets(tmp_path):
    text = MINIMAL + CLIENT + "    upstream: {client_auth: {method: client_secret_basic, secret: '${ACME_SECRET_T}'}}\n"
    result = run_cli("check-config", "-c", str(write(tmp_path, text)), env={"ACME_SECRET_T": "super-secret-value"})
    assert result.returncode == 0, result.stderr
    assert "super-secret-value" not in result.stdout + result.stderr
    assert "${ACME_SECRET_T}" in result.stdout and "***" in result.stdout
    assert "max_body_bytes: 8192" in result.stdout  # the effective config shows defaults


def test_check_config_refuses_with_exit_1(tmp_path):
    result = run_cli("check-config", "-c", str(write(tmp_path, MINIMAL + "limits: {read_timeout: soon}\n")))
    assert result.returncode == 1
    assert "limits.read_timeout" in result.stderr and "duration" in result.stderr


def test_check_config_refuses_bad_key_material(tmp_path):
    text = MINIMAL + CLIENT.replace("{jwks: {keys: []}}", '{jwks: {keys: [{kty: RSA, n: "AQAB", e: "AQAB", alg: RS256}]}}')
    result = run_cli("check-config", "-c", str(write(tmp_path, text)))
    assert result.returncode == 1
    assert "clients[0].keys" in result.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("bearer-gateway ")


def test_example_config_is_valid(tmp_path, monkeypatch):
    from gateway.jose.signing import generate_private_key_pem

    key = tmp_path / "gw-1.pem"
    key.write_bytes(generate_private_key_pem("ES256"))
    text = (Path(__file__).parents[2] / "config" / "gateway.example.yaml").read_text()
    monkeypatch.setenv("ACME_SECRET", "example-secret")
    config = load_config(write(tmp_path, text.replace("/etc/bearer-gateway/gw-1.pem", str(key))))
    assert config.clients[0].upstream.mode == "resign"
    assert config.upstream.circuit_breaker is not None and config.upstream.circuit_breaker.failures == 5
