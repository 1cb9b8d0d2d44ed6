"""Issue 13 items 3 and 4: operator logs (json | text, start-up and shutdown lines, audit fields,
JWKS fetches) from a real `bearer-gateway run` process; X-Request-Id and traceparent over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.integration.test_run_and_reload import free_port, wait_ready
from tests.support.gateway import base_config
from tests.support.keys import client_entry, client_key

KEY = client_key("logged-app")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def sent(upstream) -> dict[str, str]:
    """The headers of the last request the AS received, names in lower case."""
    return {name.lower(): value for name, value in upstream.seen[-1].headers.items()}


class _JWKS:
    """A JWKS server behind a URL with userinfo in it (which the logs must mask)."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response(KEY.jwks())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _run(config: dict, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    await wait_ready(f"http://127.0.0.1:{config['admin']['port']}/healthz")
    return process, path


async def test_json_logs_start_audit_jwks_and_drained_shutdown(upstream, tmp_path: Path):
    jwks = _JWKS()
    await jwks.start()
    port, admin = free_port(), free_port()
    entry = {"client_id": KEY.client_id, "keys": {"jwks_uri": f"http://fetcher:s3cr3t-pw@127.0.0.1:{jwks.port}/jwks.json"}}
    config = base_config(
        upstream.token_url,
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin},
        logging={"format": "json", "level": "info", "audit": True},
        clients=[entry],
    )
    upstream.delay = 1.0  # the token request is in flight when SIGTERM comes
    process, path = await _run(config, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            request = session.post(
                f"http://127.0.0.1:{port}/oauth2/token",
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": KEY.assertion()},
                headers={"User-Agent": "probe/" + "x" * 1000},
            )
            pending = asyncio.ensure_future(request)
            await asyncio.sleep(0.4)
            process.send_signal(signal.SIGTERM)
            response = await pending
            assert response.status == 200  # drained: answered after SIGTERM
            request_id = response.headers["X-Request-Id"]
            response.release()
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        await jwks.stop()
    assert process.returncode == 0
    stderr = err.decode()
    assert "s3cr3t-pw" not in stderr and "s3cr3t-pw" not in out.decode()
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    by_message = {line["message"]: line for line in lines}

    started = by_message["started"]
    assert started["level"] == "info" and started["logger"] == "bearer_gateway"
    assert started["config"] == str(path)
    assert started["config_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert started["clients"] == 1 and started["state_backend"] == "memory"
    assert started["listen"] == f"http://127.0.0.1:{port}" and started["admin"] == f"http://127.0.0.1:{admin}"
    assert started["version"]

    fetched = next(line for line in lines if line["message"].startswith("jwks fetched"))
    assert fetched["jwks_uri"] == f"http://***@127.0.0.1:{jwks.port}/jwks.json"
    assert fetched["jwks_keys"] == 1

    assert by_message["stopped"]["drained_requests"] == 1

    audit = [json.loads(line) for line in out.decode().splitlines()]
    assert len(audit) == 1
    record = audit[0]
    assert record["request_id"] == request_id
    assert record["status"] == 200 and record["upstream_status"] == 200
    assert record["method"] == "POST" and record["path"] == "/oauth2/token"
    assert record["user_agent"] == ("probe/" + "x" * 1000)[:256]
    assert record["client"] == KEY.client_id and record["outcome"] == "accepted"
    assert KEY.assertion()[:20] not in out.decode() + stderr  # never the assertion


async def test_text_logs_one_line_per_event(upstream, tmp_path: Path):
    port, admin = free_port(), free_port()
    config = base_config(
        upstream.token_url,
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin},
        logging={"format": "text", "level": "info"},
    )
    process, path = await _run(config, tmp_path)
    try:
        # A refused reload names several problems: still one line.
        path.write_text(yaml.safe_dump({**config, "limits": {"read_timeout": "forever", "max_headers": 1}}))
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/nowhere", data=b"x") as response,
        ):
            assert response.status == 404
            assert len(response.headers["X-Request-Id"]) == 32
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = err.decode().splitlines()
    refused = [line for line in lines if "configuration reload refused" in line]
    assert len(refused) == 1
    assert "limits.read_timeout" in refused[0] and "limits.max_headers" in refused[0]
    assert any(" INFO bearer_gateway started " in line and "clients=0" in line for line in lines)
    assert any(" INFO bearer_gateway stopped drained_requests=0" in line for line in lines)
    audit = json.loads(out.decode().splitlines()[0])
    assert audit["status"] == 404 and audit["method"] == "POST" and audit["path"] == "/nowhere"


async def test_request_id_returned_and_forwarded(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=[client_entry(KEY)]))
    # An untrusted caller's id is not kept: the gateway's own goes back and to the AS.
    status, _, headers = await gw.token(KEY.assertion())
    assert status == 200
    own = headers["X-Request-Id"]
    assert len(own) == 32 and own == sent(upstream)["x-request-id"]
    status, _, headers = await gw.post_form(
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": KEY.assertion()},
        headers={"X-Request-Id": "chosen-by-caller"},
    )
    assert status == 200 and headers["X-Request-Id"] != "chosen-by-caller"
    assert sent(upstream)["x-request-id"] == headers["X-Request-Id"]
    # Passthrough: the caller's header is replaced too, not copied.
    status, _, headers = await gw.post_form({"grant_type": "client_credentials"}, headers={"X-Request-Id": "mine"})
    assert status == 200 and sent(upstream)["x-request-id"] == headers["X-Request-Id"] != "mine"
    # A rejection carries one as well.
    status, _, headers = await gw.post_form({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"})
    assert status == 400 and len(headers["X-Request-Id"]) == 32


async def test_request_id_from_trusted_proxy_validated(upstream, gateway_factory):
    config = base_config(upstream.token_url, listen={"trusted_proxies": ["127.0.0.1/32"]}, clients=[client_entry(KEY)])
    gw = await gateway_factory(config)
    status, _, headers = await gw.post_form(
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": KEY.assertion()},
        headers={"X-Request-Id": "edge-7f3a:01"},
    )
    assert status == 200 and headers["X-Request-Id"] == "edge-7f3a:01"
    assert sent(upstream)["x-request-id"] == "edge-7f3a:01"
    for bad in ("has space", "x" * 129, "quote\"d", "new\\line"):
        status, _, headers = await gw.post_form({"grant_type": "client_credentials"}, headers={"X-Request-Id": bad})
        assert status == 200 and headers["X-Request-Id"] != bad and len(headers["X-Request-Id"]) == 32
        assert sent(upstream)["x-request-id"] == headers["X-Request-Id"]


async def test_traceparent_propagated_when_valid(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=[client_entry(KEY)]))
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
    status, _, _ = await gw.post_form(
        {**form, "assertion": KEY.assertion()}, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    )
    assert status == 200
    assert sent(upstream)["traceparent"] == TRACEPARENT
    assert sent(upstream)["tracestate"] == "vendor=abc"
    invalid = (
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace-id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent-id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        TRACEPARENT + "-extra",
    )
    for value in invalid:
        status, _, _ = await gw.post_form({"grant_type": "client_credentials"}, headers={"traceparent": value,
                                                                                       "tracestate": "vendor=abc"})
        assert status == 200
        assert "traceparent" not in sent(upstream) and "tracestate" not in sent(upstream)
    # The passthrough route forwards a valid one too.
    await gw.post_form({"grant_type": "client_credentials"}, headers={"traceparent": TRACEPARENT})
    assert sent(upstream)["traceparent"] == TRACEPARENT
