"""Issue 10: each fault the adversarial review reproduced, over real sockets (one test or two each)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support.gateway import AUDIENCE, JWT_BEARER, base_config, metric_value
from tests.support.hostile import (
    RawServer,
    audit_lines,
    enable_audit,
    forged,
    good_claims,
    read_request,
)
from tests.support.keys import client_entry, client_key

ACME = client_key("hardening-acme", "ES256")
CC = b"grant_type=client_credentials"


def config(upstream_url: str, **sections):
    return base_config(upstream_url, clients=[client_entry(ACME)], **sections)


# 1. Circuit breaker stuck open -------------------------------------------------------------------


async def test_cancelled_probe_does_not_leave_the_circuit_open(upstream, gateway_factory):
    """The half-open probe's caller disconnects: the probe slot is freed, the circuit can close."""
    upstream.answer_json(500, {"error": "server_error"})
    gw = await gateway_factory(config(upstream.token_url, upstream={
        "token_url": upstream.token_url, "circuit_breaker": {"failures": 1, "open_for": "300ms"}}))
    assert (await gw.token(ACME.assertion()))[0] == 500  # the circuit opens
    await asyncio.sleep(0.35)
    upstream.answer_json(200, {"access_token": "a", "token_type": "Bearer"})
    upstream.delay = 1.0
    # The probe: its caller gives up while the AS is still thinking (handler cancelled).
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession() as session:
            await session.post(gw.token_url, data=f"grant_type={JWT_BEARER}&assertion={ACME.assertion()}",
                               headers={"Content-Type": "application/x-www-form-urlencoded"},
                               timeout=aiohttp.ClientTimeout(total=0.2))
    await asyncio.sleep(1.2)  # the AS answered meanwhile; nobody was there to read it
    upstream.delay = 0.0
    statuses = [(await gw.token(ACME.assertion()))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]


async def test_truncated_answer_is_a_502_and_frees_the_probe(gateway_factory):
    """A truncated AS body (ClientPayloadError) is upstream_bad_response, not a 500; the circuit recovers."""
    mode = {"truncate": True}

    async def answer(reader, writer):
        while True:
            await read_request(reader)
            if mode["truncate"]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc")
                await writer.drain()
                return  # closes mid-body
            body = b'{"access_token":"a","token_type":"Bearer"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    server = await RawServer(answer).start()
    try:
        gw = await gateway_factory(config(server.url(), upstream={
            "token_url": server.url(), "circuit_breaker": {"failures": 1, "open_for": "300ms"}}))
        sample = 'bearer_gateway_upstream_errors_total{reason="upstream_bad_response"}'
        async with gw.session.get(gw.admin_url + "/metrics") as response:
            before = metric_value(await response.text(), sample)  # the registry is per process
        status, document, _ = await gw.token(ACME.assertion())
        assert (status, document["error"]) == (503, "temporarily_unavailable")  # not a 500
        status, _, _ = await gw.token(ACME.assertion())
        assert status == 503  # the truncated answer opened the circuit
        await asyncio.sleep(0.35)
        assert (await gw.token(ACME.assertion()))[0] == 503  # the half-open probe is truncated too
        mode["truncate"] = False
        await asyncio.sleep(0.35)
        assert [(await gw.token(ACME.assertion()))[0] for _ in range(2)] == [200, 200]
        async with gw.session.get(gw.admin_url + "/metrics") as response:
            text = await response.text()
        assert metric_value(text, sample) - before == 2
    finally:
        await server.stop()


async def test_passthrough_failures_do_not_open_the_jwt_bearer_circuit(gateway_factory):
    """Unauthenticated client_credentials traffic the AS fails cannot shut verified jwt-bearer requests out."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") == "client_credentials":
            return web.json_response({"error": "server_error"}, status=500)
        return web.json_response({"access_token": "a", "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    try:
        gw = await gateway_factory(config(url, upstream={
            "token_url": url, "circuit_breaker": {"failures": 2, "open_for": "30s"}}))
        assert [(await gw.post_form(CC))[0] for _ in range(3)] == [500, 500, 503]  # the passthrough circuit
        assert [(await gw.token(ACME.assertion()))[0] for _ in range(3)] == [200, 200, 200]
    finally:
        await runner.cleanup()


# 3. Overflow on huge numeric dates -----------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    '"exp":1' + "0" * 400,
    '"exp":{exp}.5,"iat":-1' + "0" * 400,
    '"exp":{exp}.5,"iat":-1e400',
    '"exp":1e400',
    '"exp":9007199254740993',
], ids=["exp-400-digits", "iat-negative-400-digits", "iat-minus-infinity", "exp-infinity", "exp-past-2^53"])
async def test_huge_numeric_dates_are_invalid_grant(upstream, gateway_factory, caplog, payload):
    enable_audit(caplog)
    gw = await gateway_factory(config(upstream.token_url))
    now = int(time.time())
    dates = payload.replace("{exp}", str(now + 60))
    claims = f'{{"iss":"{ACME.client_id}","sub":"tel:+34600000001","aud":"{AUDIENCE}","jti":"j1","scope":"s",{dates}}}'
    if '"iat"' not in claims:
        claims = claims[:-1] + f',"iat":{now}}}'
    status, document, _ = await gw.token(forged(claims))
    assert (status, document["error"]) == (400, "invalid_grant")
    assert audit_lines(caplog)[-1]["reason"] in ("claim_invalid", "lifetime_too_long")
    assert "Traceback" not in caplog.text
    assert upstream.seen == []


# 4. X-Forwarded-For lines joined --------------------------------------------------------------------


async def test_every_x_forwarded_for_line_is_read(upstream, gateway_factory, caplog):
    """HAProxy-style: the attacker's own line first, the trusted proxy's appended line second."""
    enable_audit(caplog)
    gw = await gateway_factory(config(upstream.token_url, listen={
        "host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]}))
    headers = CIMultiDict([("Content-Type", "application/x-www-form-urlencoded"),
                           ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")])
    async with gw.session.post(gw.token_url, data=CC, headers=headers) as response:
        assert response.status == 200
    assert audit_lines(caplog)[-1]["client_address"] == "198.51.100.7"
    # The AS sees the whole chain, the proxy (our peer) appended.
    assert upstream.seen[-1].headers["X-Forwarded-For"] == "6.6.6.6, 198.51.100.7, 127.0.0.1"


# 8. `$` accepts a trailing newline --------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["sub", "jti"])
async def test_trailing_newline_in_claims_is_refused(upstream, gateway_factory, caplog, claim):
    enable_audit(caplog)
    gw = await gateway_factory(config(upstream.token_url))
    value = {"sub": "tel:+34600000001\n", "jti": "jti-newline\n"}[claim]
    assertion = ACME.signer.sign(good_claims(ACME.client_id, **{claim: value}))
    status, document, _ = await gw.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    assert audit_lines(caplog)[-1]["reason"] == {"sub": "subject_format", "jti": "jti_invalid"}[claim]
    assert upstream.seen == []


async def test_trailing_newline_in_kid_and_form_is_refused(upstream, gateway_factory, caplog):
    from gateway.jose.keys import ALGORITHM_OBJECTS
    from tests.support.hostile import b64

    enable_audit(caplog)
    gw = await gateway_factory(config(upstream.token_url))
    head = b64(json.dumps({"alg": "ES256", "kid": ACME.kid + "\n"}))
    body = b64(json.dumps(good_claims(ACME.client_id)))
    signature = ALGORITHM_OBJECTS["ES256"].sign(f"{head}.{body}".encode(), ACME.signer.key)
    status, document, _ = await gw.token(f"{head}.{body}.{b64(signature)}")
    assert (status, document["error"]) == (400, "invalid_grant")
    assert audit_lines(caplog)[-1]["reason"] == "kid_invalid"
    status, _, _ = await gw.post_form(f"grant_type={JWT_BEARER}&assertion={ACME.assertion()}\n".encode())
    assert status == 400
    assert audit_lines(caplog)[-1]["reason"] == "form_malformed"
    assert upstream.seen == []


# 9. Passthrough forwards an allow-list of headers ----------------------------------------------------


async def test_passthrough_forwards_allow_listed_headers_only(upstream, gateway_factory):
    gw = await gateway_factory(config(upstream.token_url))
    hostile = {"X-Real-IP": "10.0.0.1", "X-Original-URL": "/admin", "Cookie": "session=x",
               "X-Forwarded-Host": "evil", "X-Custom": "1", "Authorization": "Basic Y2M6c2VjcmV0",
               "DPoP": "proof", "Accept": "application/json"}
    status, _, _ = await gw.post_form(CC, headers=hostile)
    assert status == 200
    seen = {name.lower() for name in upstream.seen[-1].headers}
    assert not seen & {"x-real-ip", "x-original-url", "cookie", "x-forwarded-host", "x-custom"}
    assert {"authorization", "dpop", "accept", "content-type"} <= seen


# 10. Cancelled requests leave an audit line and a metric ---------------------------------------------


async def test_cancelled_request_is_audited_and_counted(upstream, gateway_factory, caplog):
    enable_audit(caplog)
    upstream.delay = 0.8
    gw = await gateway_factory(config(upstream.token_url))
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession() as session:
            await session.post(gw.token_url, data=f"grant_type={JWT_BEARER}&assertion={ACME.assertion()}",
                               headers={"Content-Type": "application/x-www-form-urlencoded"},
                               timeout=aiohttp.ClientTimeout(total=0.3))
    await asyncio.sleep(0.3)
    lines = audit_lines(caplog)
    assert len(lines) == 1 and lines[0]["reason"] == "client_disconnected"
    assert upstream.seen  # it had reached the AS
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert "client_disconnected" in text


# 12. Content-Encoding refused on token paths --------------------------------------------------------


async def test_compressed_token_request_is_refused(upstream, gateway_factory, caplog):
    import gzip

    enable_audit(caplog)
    gw = await gateway_factory(config(upstream.token_url))
    status, document, _ = await gw.post_form(gzip.compress(CC), headers={"Content-Encoding": "gzip"})
    assert (status, document["error"]) == (400, "invalid_request")
    assert audit_lines(caplog)[-1]["reason"] == "content_encoding"
    assert upstream.seen == []
    assert (await gw.post_form(CC, headers={"Content-Encoding": "identity"}))[0] == 200
