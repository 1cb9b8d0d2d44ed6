"""Issue: foundation. Request-level stages 0-4 and the forwarding core, over real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp

from tests.support.gateway import TOKEN_PATH, base_config
from tests.support.upstream import RecordingUpstream

CC_BODY = b"grant_type=client_credentials&client_id=app&client_secret=s3cr%C3%A9t"


async def test_other_grant_forwarded_byte_for_byte(upstream, gateway_factory):
    upstream.body = b'{"access_token":"x.y.z","token_type":"Bearer", "expires_in": 60}'
    upstream.extra_headers = {"Cache-Control": "no-store", "X-Upstream": "yes", "Connection": "close"}
    gw = await gateway_factory(base_config(upstream.token_url))
    async with gw.session.post(
        gw.token_url,
        data=CC_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "6.6.6.6",
            "X-Custom": "kept",
        },
    ) as response:
        body = await response.read()
        assert response.status == 200
        assert body == upstream.body
        assert response.headers["X-Upstream"] == "yes"
        assert response.headers["Cache-Control"] == "no-store"
    assert len(upstream.seen) == 1
    seen = upstream.seen[0]
    assert seen.body == CC_BODY
    assert seen.path == "/realms/camara/protocol/openid-connect/token"
    # An untrusted caller's X-Forwarded-For is replaced by what the gateway saw.
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert "X-Custom" not in seen.headers  # an allow-list of request headers is forwarded (issue 10 item 9)
    assert "Keep-Alive" not in seen.headers


async def test_upstream_error_answer_passes_through(upstream, gateway_factory):
    upstream.answer_json(401, {"error": "invalid_client", "error_description": "nope"})
    gw = await gateway_factory(base_config(upstream.token_url))
    status, document, _ = await gw.post_form(CC_BODY)
    assert (status, document["error"]) == (401, "invalid_client")


async def test_trusted_proxy_chain_extends_forwarded_for(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, listen={"trusted_proxies": ["127.0.0.0/8"]}))
    status, _, _ = await gw.post_form(CC_BODY, headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert status == 200
    assert upstream.seen[0].headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert upstream.seen[0].headers["X-Forwarded-Proto"] == "https"


def _expect(document, status, error, got_status):
    assert (got_status, document.get("error")) == (status, error), document


async def test_oversized_body_with_length_is_refused_unread(upstream, gateway_factory):
    gw = await gateway_factory(
        base_config(upstream.token_url, limits={"max_body_bytes": 1024, "max_assertion_bytes": 512})
    )
    status, document, headers = await gw.post_form(b"grant_type=client_credentials&pad=" + b"a" * 2000)
    _expect(document, 413, "invalid_request", status)
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    assert upstream.seen == []


async def test_oversized_chunked_body_is_refused(upstream, gateway_factory):
    gw = await gateway_factory(
        base_config(upstream.token_url, limits={"max_body_bytes": 1024, "max_assertion_bytes": 512})
    )

    async def chunks():
        yield b"grant_type=client_credentials&pad="
        for _ in range(10):
            yield b"a" * 300

    async with gw.session.post(
        gw.token_url, data=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as response:
        assert "Content-Length" not in response.request_info.headers
        document = await response.json()
        _expect(document, 413, "invalid_request", response.status)
    assert upstream.seen == []


async def test_chunked_body_within_cap_is_accepted(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url))

    async def chunks():
        yield b"grant_type=client_"
        yield b"credentials"

    async with gw.session.post(
        gw.token_url, data=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as response:
        assert response.status == 200
    assert upstream.seen[0].body == b"grant_type=client_credentials"


async def test_wrong_content_type(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url))
    for content_type in ("application/json", "text/plain", "application/x-www-form-urlencoded; charset=latin-1", ""):
        status, document, _ = await gw.post_form(
            b"grant_type=client_credentials", headers={"Content-Type": content_type}
        )
        _expect(document, 400, "invalid_request", status)
    assert upstream.seen == []


async def test_malformed_forms(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, limits={"max_form_params": 4}))
    cases = {
        b"grant_type=client_credentials&grant_type=password": 400,  # repeated (RFC 6749 §3.2)
        b"grant_type=client_credentials&scope=a&scope=b": 400,
        b"scope=a": 400,  # missing grant_type
        b"grant_type=": 400,  # empty grant_type
        b"": 400,
        b"a=1&b=2&c=3&d=4&grant_type=client_credentials": 400,  # too many parameters
        b"grant_type=client_credentials&x=%zz": 400,  # bad percent escape
        b"grant_type=client_credentials&x=%ff": 400,  # not UTF-8
        "grant_type=client_credentials&x=é".encode(): 400,  # raw non-ASCII
        b"grant_type=client_credentials&&x=1": 400,  # empty pair
        b"grant_type=client_credentials&novalue": 400,
    }
    for body, expected in cases.items():
        status, document, _ = await gw.post_form(body)
        assert (status, document.get("error")) == (expected, "invalid_request"), body
    assert upstream.seen == []


async def test_method_and_path_policy(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url))
    async with gw.session.get(gw.token_url) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"] == "invalid_request"
    async with gw.session.get(gw.url + "/admin/secret") as response:
        assert response.status == 404
    assert upstream.seen == []


async def test_other_paths_forward_policy(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, passthrough={"other_paths": "forward"}))
    async with gw.session.get(gw.url + "/realms/camara/.well-known/openid-configuration?x=1") as response:
        assert response.status == 200
    assert upstream.seen[0].path == "/realms/camara/.well-known/openid-configuration?x=1"
    assert upstream.seen[0].method == "GET"


async def test_other_grants_deny_policy(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, passthrough={"other_grants": "deny"}))
    status, document, _ = await gw.post_form(CC_BODY)
    _expect(document, 400, "unsupported_grant_type", status)
    assert upstream.seen == []


async def test_headers_too_large(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, limits={"max_header_bytes": 2048}))
    headers = {f"X-Pad-{i}": "v" * 200 for i in range(15)}
    status, document, _ = await gw.post_form(CC_BODY, headers=headers)
    _expect(document, 431, "invalid_request", status)
    assert upstream.seen == []


async def test_slow_body_times_out(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, limits={"read_timeout": "500ms"}))
    port = gw.gateway.main_port

    def slowloris() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: 100\r\n\r\ngrant_type=cli".encode()
            )
            started = time.monotonic()
            data = sock.recv(4096)
            return time.monotonic() - started, data

    elapsed, data = await asyncio.to_thread(slowloris)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b'"invalid_request"' in data
    assert 0.4 < elapsed < 2.0
    assert upstream.seen == []


async def test_upstream_down_is_503_with_retry_after(gateway_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    gw = await gateway_factory(base_config(f"http://127.0.0.1:{port}/token"))
    started = time.monotonic()
    status, document, headers = await gw.post_form(CC_BODY)
    _expect(document, 503, "temporarily_unavailable", status)
    assert int(headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 2


async def test_upstream_timeout_is_504_within_timeout(gateway_factory):
    slow = await RecordingUpstream(delay=5).start()
    try:
        config = base_config(
            slow.token_url, upstream={"token_url": slow.token_url, "timeouts": {"connect": "1s", "total": "700ms"}}
        )
        gw = await gateway_factory(config)
        started = time.monotonic()
        status, document, _ = await gw.post_form(CC_BODY)
        elapsed = time.monotonic() - started
        _expect(document, 504, "temporarily_unavailable", status)
        assert 0.6 < elapsed < 1.5
        assert len(slow.seen) == 1  # sent once, never retried
    finally:
        await slow.stop()


async def test_admin_endpoints(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url))
    await gw.post_form(CC_BODY)
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.admin_url + "/healthz") as response:
            assert response.status == 200
        async with session.get(gw.admin_url + "/readyz") as response:
            document = await response.json()
            assert response.status == 200, document
            assert document["checks"]["upstream"] is True
        async with session.get(gw.admin_url + "/metrics") as response:
            text = await response.text()
            assert (
                'bearer_gateway_requests_total{client="unknown",grant="other",outcome="accepted",reason="ok"}' in text
            )
            assert "bearer_gateway_upstream_duration_seconds_bucket" in text


async def test_slow_headers_connection_is_closed(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, limits={"keepalive_timeout": "700ms"}))
    port = gw.gateway.main_port

    def slow_headers() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: x\r\n".encode())  # headers never finish
            started = time.monotonic()
            return time.monotonic() - started if sock.recv(4096) == b"" else -1.0, b""

    elapsed, _ = await asyncio.to_thread(slow_headers)
    assert 0.5 < elapsed < 2.0  # closed by the server after keepalive_timeout
    assert upstream.seen == []
