"""The Redis backend with a real redis-server: shared replay set and limits, bounded failure."""

from __future__ import annotations

import time

import aiohttp

from tests.integration.test_pipeline import ES, clients
from tests.support.gateway import base_config


def redis_config(upstream, redis_url: str, on_error: str = "fail_closed", **extra):
    none = {"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None}
    return base_config(upstream.token_url, clients=clients(), rate_limits={**none, **extra.pop("rate_limits", {})},
                       state={"backend": "redis", "redis": {"url": redis_url, "timeout": "100ms", "on_error": on_error}},
                       **extra)


async def test_replay_is_shared_between_gateways(upstream, gateway_factory, redis_server):
    a = await gateway_factory(redis_config(upstream, redis_server.url), name="a.yaml")
    b = await gateway_factory(redis_config(upstream, redis_server.url), name="b.yaml")
    assertion = ES.assertion()
    assert (await a.token(assertion))[0] == 200
    status, document, _ = await b.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    assert len(upstream.seen) == 1


async def test_client_quota_is_shared_between_gateways(upstream, gateway_factory, redis_server):
    quota = {"per_client": {"rate": "1/m", "burst": 3}}
    a = await gateway_factory(redis_config(upstream, redis_server.url, rate_limits=quota), name="a.yaml")
    b = await gateway_factory(redis_config(upstream, redis_server.url, rate_limits=quota), name="b.yaml")
    statuses = [(await gw.token(ES.assertion()))[0] for gw in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429]


async def test_redis_down_fail_closed(upstream, gateway_factory, redis_server):
    gw = await gateway_factory(redis_config(upstream, redis_server.url))
    redis_server.stop()
    status, document, headers = await gw.token(ES.assertion())
    assert (status, document["error"]) == (503, "temporarily_unavailable")
    assert "Retry-After" in headers
    assert upstream.seen == []
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["checks"]["state"] is False


async def test_hung_redis_costs_at_most_the_timeout(upstream, gateway_factory, redis_server):
    gw = await gateway_factory(redis_config(upstream, redis_server.url, rate_limits={"per_ip": {"rate": "50/s", "burst": 100}}))
    assert (await gw.token(ES.assertion()))[0] == 200
    redis_server.pause()
    try:
        started = time.monotonic()
        status, document, _ = await gw.token(ES.assertion())
        elapsed = time.monotonic() - started
        assert (status, document["error"]) == (503, "temporarily_unavailable")
        assert elapsed < 0.6  # one 100 ms timeout, not seconds
    finally:
        redis_server.resume()


async def test_redis_down_fail_open_uses_per_process_state(upstream, gateway_factory, redis_server):
    gw = await gateway_factory(redis_config(upstream, redis_server.url, on_error="fail_open",
                                            rate_limits={"per_ip": {"rate": "1/m", "burst": 2}}))
    redis_server.stop()
    assertion = ES.assertion()
    assert (await gw.token(assertion))[0] == 200
    # Replays are still caught by the per-process fallback set...
    assert (await gw.token(assertion))[0] == 400
    # ...and the per-IP limit by per-process cells.
    assert (await gw.token(ES.assertion()))[0] == 429
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'bearer_gateway_state_errors_total{decision="fail_open",operation="admission"}' in text
    assert 'bearer_gateway_state_errors_total{decision="fail_open",operation="rate_limit"}' in text


async def test_three_round_trips_per_accepted_request(upstream, gateway_factory, redis_server):
    import redis

    every_limit = {"per_ip": {"rate": "100/s", "burst": 100}, "global": {"rate": "100/s", "burst": 100},
                   "per_issuer_unverified": {"rate": "100/s", "burst": 100},
                   "per_client": {"rate": "100/s", "burst": 100}}
    gw = await gateway_factory(redis_config(upstream, redis_server.url, rate_limits=every_limit))
    assert (await gw.token(ES.assertion()))[0] == 200  # loads the scripts
    client = redis.Redis.from_url(redis_server.url)
    client.config_resetstat()
    assert (await gw.token(ES.assertion()))[0] == 200
    stats = client.info("commandstats")
    client.close()
    calls = {name: value["calls"] for name, value in stats.items()}
    # Stage 5 (per-IP + global), stage 10 (per-issuer guard), stages 14 + 13 (quota + jti): one script
    # each. (commandstats also counts the commands the scripts run inside Redis.)
    assert calls["cmdstat_evalsha"] == 3 and "cmdstat_eval" not in calls, calls
    assert calls["cmdstat_set"] == 5  # four cells and the jti, all written by the three scripts
