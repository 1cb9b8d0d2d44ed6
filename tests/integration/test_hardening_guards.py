"""Issue 10 items 2, 5, 7 and 13 (reload): replay across reloads, the pre-signature guard, jti spent only
when the AS may be called, reloads in turn."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import yaml
from aiohttp import web

from tests.support.gateway import JWT_BEARER, base_config
from tests.support.hostile import forged, good_claims
from tests.support.keys import client_entry, client_key

ACME = client_key("guard-acme", "ES256")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def config(upstream_url: str, **sections):
    return base_config(upstream_url, clients=[client_entry(ACME)], **sections)


async def rewrite_and_reload(gw, config_dict) -> bool:
    gw.path.write_text(yaml.safe_dump(config_dict))
    return await gw.gateway.reload()


# 2. Replay accepted after a reload of `state:` ----------------------------------------------------


async def test_state_change_on_reload_cannot_reopen_the_replay_set(upstream, gateway_factory):
    cfg = config(upstream.token_url)
    gw = await gateway_factory(cfg)
    used = ACME.assertion()
    assert (await gw.token(used))[0] == 200
    # Rebuilding the memory replay set would forget `used`: the reload is refused, the set kept.
    assert await rewrite_and_reload(gw, {**cfg, "state": {"max_replay_entries": 5000}}) is False
    status, document, _ = await gw.token(used)
    assert (status, document["error"]) == (400, "invalid_grant")
    # Another change reloads; the replay set stays.
    assert await rewrite_and_reload(gw, {**cfg, "passthrough": {"other_grants": "deny"}}) is True
    assert (await gw.token(used))[0] == 400
    assert (await gw.token(ACME.assertion()))[0] == 200


async def test_redis_client_settings_reload_and_keep_the_replay_set(upstream, gateway_factory, redis_server):
    state = {"backend": "redis", "redis": {"url": redis_server.url, "timeout": "100ms"}}
    cfg = config(upstream.token_url, state=state)
    gw = await gateway_factory(cfg)
    used = ACME.assertion()
    assert (await gw.token(used))[0] == 200
    changed = {**state, "redis": {**state["redis"], "timeout": "200ms"}}
    assert await rewrite_and_reload(gw, {**cfg, "state": changed}) is True
    assert (await gw.token(used))[0] == 400
    # Moving the replay set to a memory backend on reload is refused.
    assert await rewrite_and_reload(gw, {**cfg, "state": {"backend": "memory"}}) is False
    assert (await gw.token(used))[0] == 400


async def test_concurrent_reloads_apply_in_turn(upstream, gateway_factory, tmp_path):
    """A slow reload (a JWKS fetched at start) started first must not win over a later one."""
    async def slow_jwks(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.json_response(ACME.jwks())

    app = web.Application()
    app.router.add_get("/jwks", slow_jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        cfg = config(upstream.token_url)
        gw = await gateway_factory(cfg)
        jwks_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
        gw.path.write_text(yaml.safe_dump({**cfg, "clients": [
            {"client_id": ACME.client_id, "keys": {"jwks_uri": jwks_uri}}]}))
        first = asyncio.ensure_future(gw.gateway.reload())
        await asyncio.sleep(0.2)  # the first reload is fetching the JWKS
        gw.path.write_text(yaml.safe_dump({**cfg, "passthrough": {"other_grants": "deny"}}))
        second = asyncio.ensure_future(gw.gateway.reload())
        assert await asyncio.gather(first, second) == [True, True]
        # The file as it is now is what runs.
        assert gw.gateway.runtime.config.passthrough.other_grants == "deny"
        assert (await gw.post_form(b"grant_type=client_credentials"))[0] == 400
    finally:
        await runner.cleanup()


# 5. The 429 client-id oracle and lockout -----------------------------------------------------------


async def test_unknown_issuer_gets_the_same_guard_and_answers(upstream, gateway_factory):
    limits = {"per_issuer_unverified": {"rate": "1/m", "burst": 3}}
    gw = await gateway_factory(config(upstream.token_url, rate_limits=limits))

    async def answers(iss: str) -> list[tuple[int, str]]:
        out = []
        for _ in range(4):
            status, document, _ = await gw.token(forged(good_claims(iss), {"alg": "ES256", "kid": ACME.kid}))
            out.append((status, document["error"]))
        return out

    known, unknown = await answers(ACME.client_id), await answers("no-such-client")
    assert known == unknown
    assert [status for status, _ in known] == [401, 401, 401, 429]


async def test_forger_elsewhere_cannot_lock_a_client_out(upstream, gateway_factory):
    limits = {"per_issuer_unverified": {"rate": "1/m", "burst": 2}}
    gw = await gateway_factory(config(upstream.token_url, rate_limits=limits))
    for _ in range(5):  # the forger, from 127.0.0.1, exhausts its own allowance for this iss
        await gw.token(forged(good_claims(ACME.client_id), {"alg": "ES256", "kid": ACME.kid}))
    assert (await gw.token(forged(good_claims(ACME.client_id))))[0] == 429
    # The real client, from another address, is not locked out.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        body = f"grant_type={JWT_BEARER}&assertion={ACME.assertion()}"
        async with session.post(gw.token_url, data=body, headers=FORM) as response:
            assert response.status == 200, await response.text()


async def test_ipv6_callers_share_their_prefix_limit(upstream, gateway_factory):
    """Per-IP limit keyed by the caller's /64 (rate_limits.ipv6_prefix): other /128s in it share it."""
    limits = {"per_ip": {"rate": "1/m", "burst": 2}}
    gw = await gateway_factory(config(upstream.token_url, rate_limits=limits, listen={
        "host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]}))
    statuses = []
    for host in ("2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:0:1::1"):
        status, _, _ = await gw.post_form(b"grant_type=client_credentials", headers={"X-Forwarded-For": host})
        statuses.append(status)
    assert statuses == [200, 200, 429, 200]


# 7. A jti burned although the AS was never called ------------------------------------------------------


async def test_shed_request_keeps_its_assertion_usable(upstream, gateway_factory):
    upstream.delay = 0.6
    gw = await gateway_factory(config(upstream.token_url, upstream={
        "token_url": upstream.token_url, "max_in_flight": 1, "retry_after": "1s"}))
    busy = asyncio.ensure_future(gw.token(ACME.assertion()))
    await asyncio.sleep(0.2)
    retried = ACME.assertion()
    status, document, headers = await gw.token(retried)
    assert (status, document["error"]) == (503, "temporarily_unavailable") and "Retry-After" in headers
    assert (await busy)[0] == 200
    upstream.delay = 0.0
    assert (await gw.token(retried))[0] == 200  # the shed try did not spend the jti


async def test_open_circuit_keeps_the_assertion_usable(upstream, gateway_factory):
    upstream.answer_json(500, {"error": "server_error"})
    gw = await gateway_factory(config(upstream.token_url, upstream={
        "token_url": upstream.token_url, "circuit_breaker": {"failures": 1, "open_for": "300ms"}}))
    assert (await gw.token(ACME.assertion()))[0] == 500
    retried = ACME.assertion()
    assert (await gw.token(retried))[0] == 503
    upstream.answer_json(200, {"access_token": "a", "token_type": "Bearer"})
    await asyncio.sleep(0.35)
    status, document, _ = await gw.token(retried)
    assert status == 200, json.dumps(document)


async def test_fail_open_fallback_replay_set_survives_a_reload(upstream, gateway_factory, redis_server):
    """Redis down under fail_open: the per-process fallback admits; a reload must not forget what it saw."""
    state = {"backend": "redis", "redis": {"url": redis_server.url, "timeout": "100ms", "on_error": "fail_open"}}
    cfg = config(upstream.token_url, state=state)
    gw = await gateway_factory(cfg)
    redis_server.stop()
    used = ACME.assertion()
    assert (await gw.token(used))[0] == 200  # admitted by the fallback
    changed = {**state, "redis": {**state["redis"], "timeout": "150ms"}}
    assert await rewrite_and_reload(gw, {**cfg, "state": changed}) is True
    status, document, _ = await gw.token(used)
    assert (status, document["error"]) == (400, "invalid_grant")
