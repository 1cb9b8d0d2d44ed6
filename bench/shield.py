"""The shield: a flood at the gateway's saturation rate plus a 10/s trickle of valid requests, with a real Keycloak."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.procs import ROOT
from bench.scenarios import Settings
from bench.servers import Bench

HELPER = ROOT / "tests" / "e2e" / "keycloak_proc.py"


def shield(bench: Bench, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    if not HELPER.exists():
        return {"status": "not available: tests/e2e/keycloak_proc.py (the Keycloak helper) is not in the tree yet"}
    return {"status": "not available: not built yet"}
