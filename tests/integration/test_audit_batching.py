"""Issue 11 item 6: audit lines batched off the hot path in a real `bearer-gateway run` process.

A line waits at most FLUSH_INTERVAL for its batch; SIGTERM after a burst loses none; the lines of
two workers sharing one stdout pipe never interleave inside a line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from gateway.audit import MAX_BATCH_LINES
from tests.integration.test_run_and_reload import free_port, wait_ready
from tests.support.gateway import base_config
from tests.support.keys import client_entry, client_key

KEY = client_key("batched-app")
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def _start(config: dict, tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", "-c", str(path), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=os.environ.copy(),
    )
    await wait_ready(f"http://127.0.0.1:{config['admin']['port']}/healthz")
    return process


async def _read_all(process: asyncio.subprocess.Process) -> bytes:
    """Everything the process writes to stdout, read as it comes (a full pipe would stall it)."""
    assert process.stdout is not None
    return await process.stdout.read()


def _config(upstream, port: int, admin: int, **sections) -> dict:
    return base_config(
        upstream.token_url,
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin},
        clients=[client_entry(KEY)],
        **sections,
    )


async def _burst(port: int, count: int) -> list[str]:
    """`count` token requests on a few keep-alive connections (accepted and replayed ones): their request ids."""
    ids: list[str] = []
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        assertion = KEY.assertion()

        async def one(i: int) -> None:
            body = {"grant_type": GRANT, "assertion": assertion if i % 2 else KEY.assertion()}
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body) as response:
                await response.read()
                ids.append(response.headers["X-Request-Id"])

        for start in range(0, count, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))
    return ids


async def test_a_line_waits_at_most_the_flush_interval(upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    process = await _start(_config(upstream, port, admin), tmp_path)
    try:
        (request_id,) = await _burst(port, 1)
        assert process.stdout is not None
        # One line, far below the batch size: written by the timer while the process keeps running.
        line = await asyncio.wait_for(process.stdout.readline(), timeout=5)
        assert json.loads(line)["request_id"] == request_id
        assert process.returncode is None
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()


async def test_sigterm_after_a_burst_loses_no_line(upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    process = await _start(_config(upstream, port, admin), tmp_path)
    reader = asyncio.ensure_future(_read_all(process))
    count = 2 * MAX_BATCH_LINES + 37  # full batches and a partial one waiting for its timer
    try:
        ids = await _burst(port, count)
    finally:
        process.send_signal(signal.SIGTERM)  # at once: the last batch is still waiting
        out = await asyncio.wait_for(reader, timeout=20)
        await process.wait()
    assert process.returncode == 0
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert sorted(r["request_id"] for r in records) == sorted(ids)
    outcomes = {r["outcome"] for r in records}
    assert outcomes == {"accepted", "rejected"}  # replays of the shared assertion are audited too


async def test_two_workers_never_interleave_inside_a_line(upstream, redis_server, tmp_path: Path):
    port, admin = free_port(), free_port()
    config = _config(upstream, port, admin, state={"backend": "redis", "redis": {"url": redis_server.url}}, workers=2)
    process = await _start(config, tmp_path)
    reader = asyncio.ensure_future(_read_all(process))
    await asyncio.sleep(0.5)  # both workers listening
    try:
        ids = await _burst(port, 600)
    finally:
        process.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(reader, timeout=30)
        await process.wait()
    lines = out.decode().splitlines()
    records = [json.loads(line) for line in lines]  # a torn line would not parse
    assert sorted(r["request_id"] for r in records) == sorted(ids)
