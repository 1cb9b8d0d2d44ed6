"""Issue 13 item 5: `check-config` refuses what cannot work, all of a file's problems in one run,
one line each; warnings for what works but is probably not meant; `run` on a port in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_run_and_reload import free_port
from tests.support.keys import client_entry, client_key

KEY = client_key("checked-app")  # ES256


def _config(**sections) -> dict:
    config = {
        "listen": {"host": "127.0.0.1", "port": 8080},
        "admin": {"host": "127.0.0.1", "port": 9100},
        "upstream": {"token_url": "https://as.example/token"},
        "profile": {"audiences": ["https://gw.example/oauth2/token"]},
        "passthrough": {"other_grants": "deny"},
    }
    config.update(sections)
    return config


def check(tmp_path: Path, config: dict | bytes, command: str = "check-config") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_bytes(config if isinstance(config, bytes) else yaml.safe_dump(config).encode())
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", command, "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def refusal_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr.splitlines()


def test_a_clean_file_passes_without_warnings(tmp_path):
    result = check(tmp_path, _config(passthrough={"other_grants": "forward", "headers": ["user-agent"]}))
    assert result.returncode == 0 and result.stderr == ""


def test_every_problem_of_a_file_in_one_run(tmp_path):
    missing = tmp_path / "absent.pem"
    config = _config(
        admin={"host": "127.0.0.1", "port": 8080},  # same as listen
        gateway={"keys": [{"kid": "gw", "alg": "ES256", "private_key_file": str(missing)}]},
        clients=[
            client_entry(KEY, algorithms=["ES256"]),
            {"client_id": "b", "keys": {"pem": [{"file": str(tmp_path / "b.pem")}]}},
        ],
    )
    lines = refusal_lines(check(tmp_path, config))
    assert len(lines) == 3, lines
    assert lines[0].endswith("admin.port: expected a port other than listen.port (8080): the token and admin "
                              "listeners cannot share an address")
    assert "gateway.keys[0].private_key_file: file" in lines[1]
    assert "clients[1].keys.pem[0].file: file" in lines[2]


def test_all_key_file_problems_in_one_run(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    config = _config(clients=[
        {"client_id": "a", "keys": {"pem": [{"file": str(bad)}]}},
        client_entry(KEY, algorithms=["RS256"]),
        {"client_id": "c", "keys": {"jwks_file": str(bad)}},
    ])
    lines = refusal_lines(check(tmp_path, config))
    assert [line.split(": ")[1] for line in lines] == ["clients[0].keys", "clients[1].algorithms", "clients[2].keys.jwks_file"]
    assert lines[1].endswith(
        f"expected an algorithm of at least one of the client's keys (ES256 (kid {KEY.kid})), got ['RS256']"
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"upstream": {"token_url": "https://as.example/token", "timeouts": {"connect": "0s"}}}, "upstream.timeouts.connect"),
        ({"upstream": {"token_url": "https://as.example/token", "timeouts": {"total": "0ms"}}}, "upstream.timeouts.total"),
        ({"upstream": {"token_url": "https://as.example/token", "circuit_breaker": {"open_for": "0s"}}},
         "upstream.circuit_breaker.open_for"),
        ({"limits": {"read_timeout": "0s"}}, "limits.read_timeout"),
        ({"limits": {"keepalive_timeout": "0s"}}, "limits.keepalive_timeout"),
        ({"profile": {"audiences": ["x"], "max_lifetime": "0s"}}, "profile.max_lifetime"),
        ({"state": {"redis": {"timeout": "0ms"}}}, "state.redis.timeout"),
    ],
)
def test_zero_durations_that_break_are_refused(tmp_path, section, key):
    lines = refusal_lines(check(tmp_path, _config(**section)))
    assert lines == [f"{tmp_path / 'gw.yaml'}: {key}: expected a duration > 0s, got 0s"]


def test_friendlier_messages(tmp_path):
    source = tmp_path / "gw.yaml"
    lines = refusal_lines(check(tmp_path, _config(listen={"trusted_proxies": ["10.0.0.0/33", "10.0.0.1/8"]})))
    expected = "expected an IP network in CIDR notation such as 10.0.0.0/8 or 2001:db8::/32 (host bits zero)"
    assert lines == [
        f"{source}: listen.trusted_proxies[0]: {expected}, got '10.0.0.0/33'",
        f"{source}: listen.trusted_proxies[1]: {expected}, got '10.0.0.1/8'",
    ]
    lines = refusal_lines(check(tmp_path, _config(clients={"acme": {"keys": {"jwks_uri": "https://a/jwks"}}})))
    assert lines == [f"{source}: clients: expected a list of clients, each item starting with '- client_id: ...'; "
                     "got a mapping (keys: acme)"]
    lines = refusal_lines(check(tmp_path, _config(clients=[client_entry(KEY, upstream={"lifetime": "1h"})])))
    assert lines == [f"{source}: clients[0].upstream.lifetime: expected a duration >= 1s and <= 5m, got 1h"]


def test_non_utf8_file_is_one_line(tmp_path):
    body = yaml.safe_dump(_config()).encode() + b"# caf\xe9\n"
    lines = refusal_lines(check(tmp_path, body))
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'gw.yaml'}: (top level): expected UTF-8 text, got byte 0xe9 at line ")
    # `run` says the same, in one line.
    assert refusal_lines(check(tmp_path, body, "run")) == lines


def test_warnings_do_not_refuse(tmp_path):
    config = _config(
        gateway={"issuer": "https://gw.example/"},
        passthrough={"other_grants": "forward"},
        clients=[{"client_id": "remote", "keys": {"jwks_uri": "http://keys:s3cret@keys.example/jwks.json"}}],
    )
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stderr
    source = tmp_path / "gw.yaml"
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{source}: gateway.issuer: warning: ends with '/'")
    assert lines[1].startswith(f"{source}: passthrough.other_grants: warning: 'forward' sends other grants")
    assert lines[2] == (f"{source}: clients[0].keys.jwks_uri: warning: plain http: anyone on the path can swap "
                        "the client's keys; use https")
    assert "s3cret" not in result.stdout + result.stderr
    assert yaml.safe_load(result.stdout)["gateway"]["issuer"] == "https://gw.example/"


@pytest.mark.parametrize("which", ["listen", "admin"])
def test_run_on_a_port_in_use_is_one_line(tmp_path, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port()
        ports = {"listen": port, "admin": other} if which == "listen" else {"listen": other, "admin": port}
        config = _config(
            listen={"host": "127.0.0.1", "port": ports["listen"]},
            admin={"host": "127.0.0.1", "port": ports["admin"]},
            upstream={"token_url": "http://127.0.0.1:9/token"},
        )
        result = check(tmp_path, config, "run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f"{which}.port" in line]
    assert lines == [f"{tmp_path / 'gw.yaml'}: {which}.port: cannot listen on 127.0.0.1:{port}: Address already in use"]
