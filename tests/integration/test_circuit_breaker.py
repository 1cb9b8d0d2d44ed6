"""Stage 15: the circuit breaker stops sending to a failing AS, then probes and recovers."""

from __future__ import annotations

import asyncio

from tests.support.gateway import base_config

BODY = b"grant_type=client_credentials"


async def test_breaker_opens_probes_and_closes(upstream, gateway_factory):
    upstream.answer_json(500, {"error": "server_error"})
    gw = await gateway_factory(base_config(upstream.token_url, upstream={
        "token_url": upstream.token_url, "circuit_breaker": {"failures": 3, "open_for": "400ms"}}))
    assert [(await gw.post_form(BODY))[0] for _ in range(3)] == [500, 500, 500]
    status, document, headers = await gw.post_form(BODY)
    assert (status, document["error"]) == (503, "temporarily_unavailable")
    assert int(headers["Retry-After"]) >= 1
    assert len(upstream.seen) == 3  # the open circuit sent nothing

    await asyncio.sleep(0.45)
    # Half-open: one probe goes; it fails, so the circuit opens again at once.
    assert (await gw.post_form(BODY))[0] == 500
    assert (await gw.post_form(BODY))[0] == 503
    assert len(upstream.seen) == 4

    await asyncio.sleep(0.45)
    upstream.answer_json(200, {"access_token": "a", "token_type": "Bearer"})
    assert (await gw.post_form(BODY))[0] == 200  # the probe succeeds and closes the circuit
    assert [(await gw.post_form(BODY))[0] for _ in range(3)] == [200, 200, 200]
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        assert "bearer_gateway_upstream_circuit_open 0.0" in await response.text()


async def test_client_errors_do_not_open_the_breaker(upstream, gateway_factory):
    upstream.answer_json(400, {"error": "invalid_grant"})
    gw = await gateway_factory(base_config(upstream.token_url, upstream={
        "token_url": upstream.token_url, "circuit_breaker": {"failures": 2, "open_for": "10s"}}))
    assert [(await gw.post_form(BODY))[0] for _ in range(4)] == [400] * 4
    assert len(upstream.seen) == 4
