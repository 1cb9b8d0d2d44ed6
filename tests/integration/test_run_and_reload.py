"""`bearer-gateway run` as a real process: serving, SIGHUP reload, a refused reload keeps the running config."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from tests.support.gateway import base_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


async def test_run_serves_and_reloads_on_sighup(upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    config = base_config(upstream.token_url, listen={"host": "127.0.0.1", "port": port},
                         admin={"host": "127.0.0.1", "port": admin})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/healthz")
        body = b"grant_type=client_credentials"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body, headers=headers) as r:
                assert r.status == 200

            # A bad file is refused; the running configuration keeps serving.
            path.write_text(yaml.safe_dump({**config, "limits": {"read_timeout": "forever"}}))
            process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body, headers=headers) as r:
                assert r.status == 200
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as r:
                assert 'bearer_gateway_config_reloads_total{outcome="refused"} 1.0' in await r.text()

            # A good file takes effect: other grants are now denied.
            path.write_text(yaml.safe_dump({**config, "passthrough": {"other_grants": "deny"}}))
            process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body, headers=headers) as r:
                assert r.status == 400
                assert (await r.json())["error"] == "unsupported_grant_type"
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as r:
                assert 'bearer_gateway_config_reloads_total{outcome="ok"} 1.0' in await r.text()
        assert len(upstream.seen) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err.decode()
    stderr = err.decode()
    assert "limits.read_timeout" in stderr  # the refusal names the key
    # One JSON audit line per token request on stdout.
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert len(lines) == 3
