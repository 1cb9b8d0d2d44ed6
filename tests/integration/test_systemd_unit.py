"""deploy/systemd/bearer-gateway.service: systemd accepts it, its sandbox scores "OK", and its
commands are the gateway's real ones.

No systemd runs as PID 1 here, so the unit is checked with systemd's own offline tools:
`systemd-analyze verify` (syntax, directives, executables) on a copy whose ExecStart points at this
checkout's bearer-gateway, and `systemd-analyze security --offline` for the exposure score.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "bearer-gateway.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "bearer-gateway.sysusers"
INSTALLED = "/opt/bearer-gateway/bin/bearer-gateway"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    executable = Path(sys.executable).with_name("bearer-gateway")
    assert executable.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(executable)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(local_unit: Path):
    done = subprocess.run(["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True, timeout=60,
                          cwd=local_unit.parent)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # ... and refuses a broken one: a misspelt directive.
    local_unit.write_text(local_unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    done = subprocess.run(["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True, timeout=60,
                          cwd=local_unit.parent)
    assert "ProtectSystm" in done.stderr


def test_sandbox_exposure_is_ok(local_unit: Path):
    # systemd rates exposure 0-10 ("OK" is <= 2.0); --threshold takes tenths and fails above it.
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(local_unit)],
                          capture_output=True, text=True, timeout=60, cwd=local_unit.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
    assert score and float(score.group(1)) <= 2.0 and score.group(2) == "OK", done.stdout[-500:]


def test_unit_runs_the_gateway_unprivileged_with_check_reload_and_drain(tmp_path: Path):
    unit = directives()
    assert unit["User"] == ["bearer-gateway"] and unit["Group"] == ["bearer-gateway"]
    entries = [line.split() for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
    assert [entry[:2] for entry in entries] == [["u", "bearer-gateway"]]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the gateway reloads on SIGHUP
    assert unit["KillSignal"] == ["SIGTERM"]  # and drains on SIGTERM
    start = shlex.split(unit["ExecStart"][0])
    check = shlex.split(unit["ExecStartPre"][0])
    assert start[:2] == [INSTALLED, "run"] and check[:2] == [INSTALLED, "check-config"]
    config = start[start.index("-c") + 1]
    assert check[check.index("-c") + 1] == config
    # The commands and options the unit uses exist in the CLI.
    for command in (start, check):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", command[1], "--help"], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0 and "-c" in done.stdout, done.stderr
