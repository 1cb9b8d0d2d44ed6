"""`make demo` in its one-shot mode prints a real Keycloak access token for a CAMARA assertion."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import _require_tools

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(900)  # the subprocess has its own 600 s bound; a cold Keycloak install fits in it
def test_demo_oneshot_prints_a_keycloak_token():
    _require_tools()
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env={**os.environ, "DEMO_ONESHOT": "1"},
                            capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "HTTP 200" in out and '"access_token": "ey' in out
    assert '"azp": "camara-app-secret"' in out and '"preferred_username": "+34600000001"' in out
    assert '"refresh_token"' not in out
    assert 'HTTP 400 {"error": "invalid_grant"' in out  # the replay
    assert 'HTTP 401 {"error": "invalid_client"' in out  # straight to Keycloak
