"""Issue 11 item 6: audit lines batched off the hot path and metrics tallied without a lock each,
with nothing lost: a real `bearer-gateway run` process flooded and stopped with SIGTERM mid-flood
writes one audit line per request it took; tallied metrics export exactly what direct ones would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import Metrics
from tests.integration.test_run_and_reload import free_port, wait_ready
from tests.support.gateway import base_config
from tests.support.hostile import forged, good_claims, token_body
from tests.support.keys import client_entry, client_key

KEY = client_key("batched-app", "ES256")


@pytest.mark.parametrize("engine", ["lean", "aiohttp"])
async def test_no_audit_line_lost_on_sigterm(engine, upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    config = base_config(
        upstream.token_url,
        listen={"host": "127.0.0.1", "port": port, "engine": engine},
        admin={"host": "127.0.0.1", "port": admin},
        rate_limits={"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None},
        logging={"audit": True},
        clients=[client_entry(KEY)],
    )
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    out_file = (tmp_path / "audit.out").open("wb")  # a file: a full pipe would block the gateway's writes
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=out_file, stderr=subprocess.PIPE, env=os.environ.copy())
    upstream.delay = 0.8  # the accepted requests are in flight when SIGTERM comes
    url = f"http://127.0.0.1:{port}/oauth2/token"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answered: list[str] = []
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/healthz")
        async with aiohttp.ClientSession() as session:

            async def one(body: bytes) -> None:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    answered.append(response.headers["X-Request-Id"])

            slow = [asyncio.ensure_future(one(token_body(KEY.assertion()))) for _ in range(3)]
            bad = token_body(forged(good_claims(KEY.client_id), {"alg": "ES256", "kid": KEY.kid}))

            async def flood() -> None:
                for _ in range(25):
                    await one(bad)

            await asyncio.gather(*(flood() for _ in range(8)))
            process.send_signal(signal.SIGTERM)  # the three slow ones are still waiting on the AS
            await asyncio.gather(*slow)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        out_file.close()
    assert process.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "audit.out").read_text().splitlines()]
    assert len(answered) == 203
    assert sorted(line["request_id"] for line in lines) == sorted(answered)  # every one, once
    assert sum(line["reason"] == "ok" for line in lines) == 3
    assert sum(line["reason"] == "signature_invalid" for line in lines) == 200


async def test_tallied_metrics_export_what_direct_ones_would():
    tallied, direct = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    values = [0.0001, 0.0002, 0.00020001, 0.003, 0.7, 12.0, 0.0, 1e-9, 5.0, 10.0, 10.5]
    for m in (tallied, direct):
        m.child(m.requests, "rejected", "iss_unknown", "unknown", "jwt-bearer")
        m.child(m.stage_duration, "claims")
    for value in values:
        for stage in ("claims", "signature"):
            tallied.observe(tallied.child(tallied.stage_duration, stage), value)
            direct.child(direct.stage_duration, stage).observe(value)
        tallied.inc(tallied.child(tallied.requests, "rejected", "iss_unknown", "unknown", "jwt-bearer"))
        direct.child(direct.requests, "rejected", "iss_unknown", "unknown", "jwt-bearer").inc()
        tallied.inc(tallied.in_flight)
        direct.in_flight.inc()
    tallied.inc(tallied.in_flight, -3.0)
    direct.in_flight.dec(3)
    # Within a running loop nothing is applied until the end of the turn; then all of it, exactly.
    assert 'reason="iss_unknown"} 0.0' in samples(tallied)
    await asyncio.sleep(0)
    assert samples(tallied) == samples(direct)
    assert 'bearer_gateway_stage_duration_seconds_bucket{le="0.0002",stage="claims"} 4.0' in samples(tallied)


def samples(m: Metrics) -> str:
    """The exposition without the _created timestamps (which differ between two registries)."""
    text = generate_latest(m.registry).decode()
    return "\n".join(line for line in text.splitlines() if "_created" not in line)
