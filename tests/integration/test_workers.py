"""`run --workers 2` with Redis: two processes on one port share the replay set; metrics cover both."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.integration.test_pipeline import ES, clients
from tests.integration.test_run_and_reload import free_port, wait_ready
from tests.support.gateway import JWT_BEARER, base_config, metric_value


async def test_two_workers_share_state(upstream, redis_server, tmp_path: Path):
    port, admin = free_port(), free_port()
    none = {"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None}
    config = base_config(upstream.token_url, clients=clients(), listen={"host": "127.0.0.1", "port": port},
                         admin={"host": "127.0.0.1", "port": admin}, rate_limits=none,
                         state={"backend": "redis", "redis": {"url": redis_server.url}}, workers=2)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/healthz")
        url = f"http://127.0.0.1:{port}/oauth2/token"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        replayed = ES.assertion()
        statuses: list[int] = []
        # New connection per request so the kernel spreads them over both workers (SO_REUSEPORT).
        await asyncio.sleep(0.5)  # both workers listening
        for i in range(40):
            assertion = replayed if i % 2 == 0 else ES.assertion()
            async with aiohttp.ClientSession() as session, session.post(
                url, data={"grant_type": JWT_BEARER, "assertion": assertion}, headers=headers
            ) as response:
                statuses.append(response.status)
        # The replayed assertion succeeds exactly once across both workers; fresh ones always.
        assert statuses[0::2].count(200) == 1 and statuses[0::2].count(400) == 19
        assert statuses[1::2] == [200] * 20
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
        accepted = metric_value(text, 'bearer_gateway_requests_total{client="acme-es",grant="jwt-bearer",outcome="accepted",reason="ok"}')
        assert accepted == 21  # summed over both workers
        # build_info is kept per process: two worker pids report.
        pids = {line.split('pid="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("bearer_gateway_build_info{") and 'pid="' in line}
        assert len(pids) == 2, text
        assert len(upstream.seen) == 21
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err.decode()[-2000:]
