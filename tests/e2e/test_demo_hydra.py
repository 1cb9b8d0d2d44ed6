"""`make demo AS=hydra` in its one-shot mode prints a real Hydra access token for a CAMARA assertion."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_hydra import _require_tools

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_demo_oneshot_prints_a_hydra_token():
    _require_tools()
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT,
                            env={**os.environ, "DEMO_ONESHOT": "1", "AS": "hydra"},
                            capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "HTTP 200" in out and '"access_token": "ory_at_' in out
    assert '"client_id": "camara-app"' in out and '"sub": "tel:+34600000001"' in out
    assert '"refresh_token"' not in out
    assert 'HTTP 400 {"error": "invalid_grant"' in out and "(requests that reached Hydra: +0)" in out  # the replay
    assert 'HTTP 400 {"error": "invalid_request"' in out  # straight to Hydra: no client authentication
