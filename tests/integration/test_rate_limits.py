"""Stages 5, 10 (guard) and 14: token-bucket limits, memory backend, over real sockets."""

from __future__ import annotations

import asyncio

from tests.integration.test_pipeline import ES, OTHER, clients, signed
from tests.support.gateway import AUDIENCE, base_config, metric_value


def limits(**buckets):
    none = {"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None}
    return {**none, **buckets}


async def test_per_ip_limit_with_retry_after(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           rate_limits=limits(per_ip={"rate": "1/m", "burst": 3})))
    answers = [await gw.token(ES.assertion()) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    _, document, headers = answers[3]
    assert document["error"] == "temporarily_unavailable"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert len(upstream.seen) == 3


async def test_per_ip_limit_applies_to_forwarded_grants(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, rate_limits=limits(per_ip={"rate": "1/m", "burst": 2})))
    statuses = [(await gw.post_form(b"grant_type=client_credentials"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(upstream.seen) == 2


async def test_trusted_proxy_addresses_are_limited_separately(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           listen={"trusted_proxies": ["127.0.0.0/8"]},
                                           rate_limits=limits(per_ip={"rate": "1/m", "burst": 1})))
    first = await gw.post_form(b"grant_type=client_credentials", headers={"X-Forwarded-For": "198.51.100.1"})
    second = await gw.post_form(b"grant_type=client_credentials", headers={"X-Forwarded-For": "198.51.100.2"})
    third = await gw.post_form(b"grant_type=client_credentials", headers={"X-Forwarded-For": "198.51.100.1"})
    assert (first[0], second[0], third[0]) == (200, 200, 429)


async def test_global_limit(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           rate_limits=limits(**{"global": {"rate": "1/m", "burst": 2}})))
    statuses = [(await gw.token(ES.assertion()))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_unverified_issuer_guard_counts_forgeries(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           rate_limits=limits(per_issuer_unverified={"rate": "1/m", "burst": 3})))
    forged = [await gw.token(signed(OTHER, iss=ES.client_id)) for _ in range(3)]
    assert [f[0] for f in forged] == [401, 401, 401]
    status, document, _ = await gw.token(ES.assertion())
    assert (status, document["error"]) == (429, "temporarily_unavailable")
    # Unknown issuers have no cell (keys stay bounded): they are refused as unknown, not limited.
    assert (await gw.token(signed(OTHER, iss="nobody")))[0] == 401
    assert upstream.seen == []


async def test_client_quota_counts_only_verified_requests_and_spares_the_jti(upstream, gateway_factory):
    entries = clients()
    entries[0]["rate_limit"] = {"rate": "1/s", "burst": 1}
    gw = await gateway_factory(base_config(upstream.token_url, clients=entries, rate_limits=limits()))
    for _ in range(5):  # forgeries do not spend the quota
        assert (await gw.token(signed(OTHER, iss=ES.client_id)))[0] == 401
    assert (await gw.token(ES.assertion()))[0] == 200
    limited = ES.assertion()
    status, document, headers = await gw.token(limited)
    assert (status, document["error"]) == (429, "temporarily_unavailable")
    await asyncio.sleep(float(headers["Retry-After"]) + 0.05)
    # The refused assertion was not spent: it passes on retry.
    assert (await gw.token(limited))[0] == 200
    assert len(upstream.seen) == 2


async def test_default_per_client_quota(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients(),
                                           rate_limits=limits(per_client={"rate": "1/m", "burst": 2}),
                                           profile={"audiences": [AUDIENCE]}))
    sample = 'bearer_gateway_rate_limit_decisions_total{decision="limited",limit="per_client"}'
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        before = metric_value(await response.text(), sample)
    assert [(await gw.token(ES.assertion()))[0] for _ in range(3)] == [200, 200, 429]
    # Another client has its own cell.
    from tests.integration.test_pipeline import RS

    assert (await gw.token(RS.assertion()))[0] == 200
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert metric_value(text, sample) == before + 1
