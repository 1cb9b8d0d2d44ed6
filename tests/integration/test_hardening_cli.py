"""Issue 10 items 11 and 13: userinfo masked in URLs; `run --workers`; keys.ttl 0s; AS answers capped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.support.gateway import base_config
from tests.support.hostile import RawServer, read_request
from tests.support.keys import client_entry, client_key
from tests.support.redis_server import free_port

ACME = client_key("cli-acme", "ES256")
CC = b"grant_type=client_credentials"


def gateway_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# 11. Passwords in URLs -----------------------------------------------------------------------------


def test_check_config_masks_userinfo(tmp_path: Path):
    config = base_config("https://as.example/token",
                         state={"backend": "redis", "redis": {"url": "redis://:hunter2@127.0.0.1:6379/0"}},
                         clients=[{"client_id": "remote", "keys": {"jwks_uri": "https://ops:pa55word@jwks.example/keys"}}])
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    result = gateway_cli("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "pa55word" not in result.stdout
    assert "redis://***@127.0.0.1:6379/0" in result.stdout
    assert "https://***@jwks.example/keys" in result.stdout


async def test_jwks_errors_mask_userinfo(upstream, gateway_factory, caplog):
    caplog.set_level(logging.INFO)

    async def bad_jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [{"kty": "bogus", "kid": "x"}]})

    app = web.Application()
    app.router.add_get("/jwks", bad_jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        uri = f"http://jwksuser:s3cretpw@127.0.0.1:{runner.addresses[0][1]}/jwks"
        await gateway_factory(base_config(upstream.token_url, clients=[
            {"client_id": "remote", "keys": {"jwks_uri": uri}}]))
        assert "jwks fetch failed" in caplog.text
        assert "s3cretpw" not in caplog.text
    finally:
        await runner.cleanup()


# 13. `run --workers`, keys.ttl 0s, AS answers read with a cap --------------------------------------


def test_run_workers_zero_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config("http://127.0.0.1:1/token")))
    result = gateway_cli("run", "-c", str(path), "--workers", "0")
    assert result.returncode == 1
    assert "--workers: workers:" in result.stderr and "Traceback" not in result.stderr


async def test_run_workers_with_secrets_in_config(upstream, redis_server, tmp_path: Path):
    port, admin = free_port(), free_port()
    client = client_entry(ACME, upstream={"client_auth": {"method": "client_secret_basic", "secret": "${CLI_ACME_SECRET}"}})
    config = base_config(upstream.token_url, listen={"host": "127.0.0.1", "port": port},
                         admin={"host": "127.0.0.1", "port": admin}, clients=[client],
                         state={"backend": "redis", "redis": {"url": redis_server.url}})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "CLI_ACME_SECRET": "s3cret"})
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("workers did not come up")
            body = f"grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion={ACME.assertion()}"
            async with session.post(f"http://127.0.0.1:{port}/oauth2/token", data=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 200
        assert upstream.seen[-1].headers["Authorization"].startswith("Basic ")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "Traceback" not in err.decode()


def test_check_config_refuses_a_zero_jwks_ttl(tmp_path: Path):
    config = base_config("http://127.0.0.1:1/token", clients=[
        {"client_id": "remote", "keys": {"jwks_uri": "https://jwks.example/keys", "ttl": "0s"}}])
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    result = gateway_cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert "clients[0].keys.ttl" in result.stderr and "Traceback" not in result.stderr


async def test_oversized_as_answer_is_refused(gateway_factory):
    chunked = {"on": False}

    async def huge(reader, writer):
        while True:
            await read_request(reader)
            if chunked["on"]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(40):
                    writer.write(b"10000\r\n" + b" " * 65536 + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
                writer.write(b" " * 2097152)
            await writer.drain()

    server = await RawServer(huge).start()
    try:
        gw = await gateway_factory(base_config(server.url(), upstream={
            "token_url": server.url(), "circuit_breaker": None}))
        status, document, _ = await gw.post_form(CC)
        assert (status, document["error"]) == (503, "temporarily_unavailable")
        chunked["on"] = True
        status, document, _ = await gw.post_form(CC)
        assert (status, document["error"]) == (503, "temporarily_unavailable")
    finally:
        await server.stop()
