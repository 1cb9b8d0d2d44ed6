"""Issue 13 item 6: `bearer-gateway schema` prints a JSON Schema every shipped config validates
against, that refuses what the gateway refuses by type (unknown keys, literal secrets, bare numbers
for durations), and that the README wires into editors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["config/gateway.example.yaml", "config/demo.yaml", "config/demo-hydra.yaml", "deploy/compose/gateway.yaml"]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "schema"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    schema = json.loads(out)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return Draft202012Validator(schema)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(validator, name):
    document = yaml.safe_load((ROOT / name).read_text())
    assert list(validator.iter_errors(document)) == []


def test_helm_values_config_validates(validator):
    values = yaml.safe_load((ROOT / "deploy/helm/bearer-gateway/values.yaml").read_text())
    assert list(validator.iter_errors(values["config"])) == []


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"upstream": {"token_url": "https://as/t"}, "listen": {"prot": 1}}, ["listen"]),  # unknown key
        ({"upstream": {"token_url": "https://as/t", "timeouts": {"total": 5}}}, ["upstream", "timeouts", "total"]),
        ({"upstream": {"token_url": "https://as/t"},
          "clients": [{"client_id": "a", "keys": {"jwks_uri": "https://a/j"},
                       "upstream": {"client_auth": {"method": "client_secret_basic", "secret": "hunter2"}}}]},
         ["clients", 0, "upstream", "client_auth", "secret"]),
        ({"upstream": {"token_url": "https://as/t"}, "rate_limits": {"global": {"rate": "fast", "burst": 1}}},
         ["rate_limits", "global"]),
        ({"listen": {}}, []),  # upstream is required
    ],
)
def test_schema_refuses(validator, document, where):
    errors = list(validator.iter_errors(document))
    assert errors
    assert any(list(error.absolute_path)[: len(where)] == where for error in errors)


def test_secret_references_validate(validator):
    for secret in ("${ACME_SECRET}", {"file": "/run/secrets/acme"}):
        document = {"upstream": {"token_url": "https://as/t"},
                    "clients": [{"client_id": "a", "keys": {"jwks_uri": "https://a/j"},
                                 "upstream": {"client_auth": {"method": "client_secret_basic", "secret": secret}}}]}
        assert list(validator.iter_errors(document)) == []


def test_duration_defaults_are_written_as_in_the_file(validator):
    properties = validator.schema["$defs"]["UpstreamTimeouts"]["properties"]
    assert properties["total"]["default"] == "5s" and properties["connect"]["default"] == "1s"


def test_readme_wires_the_schema_into_editors():
    readme = (ROOT / "README.md").read_text()
    assert "bearer-gateway schema > bearer-gateway.schema.json" in readme
    assert "# yaml-language-server: $schema=" in readme
