"""Issue 10, keep them found: hostile clients over raw sockets (slowloris, idle floods, oversized
everything, pipelined floods), hostile JWKS servers, and the fuzz corpus replayed. The tests speak
HTTP/1.1 bytes to whatever listener serves the gateway, so they apply to any listener."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.gateway import TOKEN_PATH, base_config
from tests.support.hostile import (
    forged,
    good_claims,
    http_exchange,
    post,
    read_response,
    status_codes,
    token_body,
)
from tests.support.keys import client_entry, client_key

ACME = client_key("hostile-acme", "ES256")
LIMITS = {"read_timeout": "500ms", "keepalive_timeout": "1s", "max_body_bytes": 4096, "max_assertion_bytes": 2048,
          "max_field_bytes": 1024, "max_headers": 16, "max_header_bytes": 4096}
ALLOWED_4XX = {400, 401, 404, 405, 408, 413, 414, 429, 431}


@pytest.fixture
async def gw(upstream, gateway_factory):
    return await gateway_factory(base_config(upstream.token_url, clients=[client_entry(ACME)], limits=LIMITS))


async def still_serves(gw) -> None:
    status, _, _ = await gw.token(ACME.assertion())
    assert status == 200


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    async with asyncio.timeout(seconds):
        return await reader.read()


# Slowloris ---------------------------------------------------------------------------------------


async def test_slowloris_headers_are_cut_off(gw):
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.main_port)
    writer.write(b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\n")
    started = time.monotonic()

    async def trickle():
        for _ in range(40):
            writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.2)

    task = asyncio.ensure_future(trickle())
    try:
        await closed_within(reader, 4.0)  # keepalive_timeout 1s bounds an unfinished request head
    finally:
        task.cancel()
        writer.close()
    assert time.monotonic() - started < 4.0
    await still_serves(gw)


async def test_slowloris_body_gets_408(gw, upstream):
    body = token_body(ACME.assertion())
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.main_port)
    head = post(TOKEN_PATH, body)[: -len(body)]
    writer.write(head + body[:10])
    started = time.monotonic()

    async def trickle():
        for byte in body[10:60]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    task = asyncio.ensure_future(trickle())
    try:
        async with asyncio.timeout(4.0):
            status = await read_response(reader)
    finally:
        task.cancel()
        writer.close()
    assert status == 408
    assert time.monotonic() - started < 2.0  # read_timeout 500 ms
    assert upstream.seen == []
    await still_serves(gw)


async def test_many_idle_connections_do_not_block_service(gw):
    idle = [await asyncio.open_connection("127.0.0.1", gw.gateway.main_port) for _ in range(200)]
    try:
        started = time.monotonic()
        await still_serves(gw)
        assert time.monotonic() - started < 1.0
        # Every idle connection is closed by the gateway after keepalive_timeout.
        await asyncio.gather(*(closed_within(reader, 5.0) for reader, _ in idle))
    finally:
        for _, writer in idle:
            writer.close()


# Oversized everything ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n",
    b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
    b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(6)) + b"\r\n",
    post(TOKEN_PATH, b"grant_type=client_credentials&x=" + b"a" * 10000),
    b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 100000000000000000000\r\n\r\n",
    b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"a" * 4096 + b"\r\n" + b"1000\r\n" + b"a" * 4096 + b"\r\n0\r\n\r\n",
    post(TOKEN_PATH, token_body("a" * 3000)),
    post(TOKEN_PATH, b"&".join(b"p%d=1" % i for i in range(100))),
], ids=["request-line", "header-field", "header-count", "header-bytes", "body", "content-length", "chunked-body",
        "assertion", "parameters"])
async def test_oversized_input_is_a_4xx(gw, upstream, raw):
    answer = await http_exchange(gw.gateway.main_port, raw, timeout=3.0)
    codes = status_codes(answer)
    assert codes and codes[0] in ALLOWED_4XX, answer[:200]
    assert upstream.seen == []
    await still_serves(gw)


# Pipelined floods ----------------------------------------------------------------------------------


async def test_pipelined_flood_gets_every_answer_in_order(gw, upstream):
    forged_body = token_body(forged(good_claims(ACME.client_id), {"alg": "ES256", "kid": ACME.kid}))
    requests = [post(TOKEN_PATH, forged_body), b"GET /admin HTTP/1.1\r\nHost: gw\r\n\r\n"] * 150
    answer = await http_exchange(gw.gateway.main_port, b"".join(requests) + post(TOKEN_PATH, b"", close=True),
                                 timeout=10.0)
    codes = status_codes(answer)
    assert len(codes) == 301  # every request answered, in order
    assert set(codes[1:300:2]) == {404}
    assert set(codes[0:300:2]) == {401, 429}  # the per-IP limit (burst 100) takes over mid-flood
    assert upstream.seen == []
    # Still serving (from this address, whose token budget the flood spent: an unknown path).
    assert status_codes(await http_exchange(gw.gateway.main_port, b"GET /x HTTP/1.1\r\nHost: gw\r\n"
                                            b"Connection: close\r\n\r\n")) == [404]


async def test_malformed_http_logs_no_traceback(gw, caplog):
    caplog.set_level(logging.INFO)
    for raw in (b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n",
                b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nContent-Type: \x17\r\n\r\n"):
        assert status_codes(await http_exchange(gw.gateway.main_port, raw, timeout=2.0)) == [400]
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


# Hostile JWKS servers ----------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["slow", "huge", "huge-chunked", "malformed", "not-an-object"])
async def test_hostile_jwks_server_costs_a_401_not_a_hang(upstream, gateway_factory, behaviour):
    mode = {"hostile": True}

    async def serve(request: web.Request) -> web.StreamResponse:
        if not mode["hostile"]:
            return web.json_response(ACME.jwks())
        if behaviour == "slow":
            await asyncio.sleep(3)
            return web.json_response(ACME.jwks())
        if behaviour == "huge":
            return web.Response(body=b'{"keys":[' + b" " * 200_000 + b"]}", content_type="application/json")
        if behaviour == "huge-chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"keys":[')
            for _ in range(50):
                await response.write(b" " * 8192)
            await response.write_eof(b"]}")
            return response
        if behaviour == "malformed":
            return web.Response(body=b'{"keys": [{"kty": "EC", "crv": "P-256", "x": 1', content_type="application/json")
        return web.json_response([1, 2, 3])

    app = web.Application()
    app.router.add_get("/jwks", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        uri = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
        keys = {"jwks_uri": uri, "fetch_timeout": "500ms", "max_bytes": 65536, "refresh_cooldown": "0s"}
        gw = await gateway_factory(base_config(upstream.token_url, clients=[{"client_id": ACME.client_id, "keys": keys}]))
        started = time.monotonic()
        status, document, _ = await gw.token(ACME.assertion())
        assert (status, document["error"]) == (401, "invalid_client")
        assert time.monotonic() - started < 2.0
        assert upstream.seen == []
        mode["hostile"] = False  # the JWKS server behaves again: the gateway recovers by itself
        assert (await gw.token(ACME.assertion()))[0] == 200
    finally:
        await runner.cleanup()


# The fuzz corpus, replayed -------------------------------------------------------------------------


def test_fuzz_corpus_replays_cleanly():
    """Every input in fuzz/corpus/ (seeds and fixed crashes) through the fuzz target's own oracle."""
    from fuzz.target import Target

    corpus = sorted((Path(__file__).resolve().parents[2] / "fuzz" / "corpus").iterdir())
    assert corpus
    target = Target()
    try:
        for path in corpus:
            target.one(path.read_bytes())
    finally:
        target.close()
