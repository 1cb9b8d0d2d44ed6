"""Issue 10, keep them found: SIGHUPs to a running `bearer-gateway run` during a bounded load lose no
request and answer none with a 5xx (reloads run in turn; in-flight requests keep their runtime)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from tests.support.gateway import JWT_BEARER, base_config
from tests.support.keys import client_entry, client_key
from tests.support.redis_server import free_port

ACME = client_key("reload-acme", "ES256")
REQUESTS = 800
CONCURRENCY = 8
SIGHUPS = 12
ROOMY = {"rate": "100000/s", "burst": 100000}


async def test_sighups_under_load_lose_nothing(upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    config = base_config(upstream.token_url, listen={"host": "127.0.0.1", "port": port},
                         admin={"host": "127.0.0.1", "port": admin}, clients=[client_entry(ACME)],
                         rate_limits={"per_ip": ROOMY, "per_issuer_unverified": ROOMY, "per_client": ROOMY,
                                      "global": ROOMY},
                         logging={"audit": False})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    statuses: list[int] = []
    failures: list[str] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for _ in range(150):
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assertions = [ACME.assertion() for _ in range(REQUESTS)]
            deadline = time.monotonic() + 30  # bounded in time as well as in requests

            async def load() -> None:
                while assertions and time.monotonic() < deadline:
                    body = f"grant_type={JWT_BEARER}&assertion={assertions.pop()}"
                    try:
                        async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body,
                                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                            await r.read()
                            statuses.append(r.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        failures.append(repr(exc))

            async def reloads() -> None:
                for index in range(SIGHUPS):
                    await asyncio.sleep(0.15)
                    # Each reload changes something, so each builds a new runtime.
                    changed = {**config, "passthrough": {"other_paths": "deny" if index % 2 else "forward"}}
                    path.write_text(yaml.safe_dump(changed))
                    process.send_signal(signal.SIGHUP)

            await asyncio.gather(reloads(), *(load() for _ in range(CONCURRENCY)))
            await asyncio.sleep(0.5)
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                text = await response.text()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert failures == [], failures[:5]
    assert len(statuses) == REQUESTS, "the load did not finish within its time bound"
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(upstream.seen) == REQUESTS
    assert f'bearer_gateway_config_reloads_total{{outcome="ok"}} {float(SIGHUPS)}' in text
    assert "Traceback" not in err.decode()
