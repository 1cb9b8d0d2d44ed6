"""The lean RESP client (gateway/state/resp.py) with a real redis-server: TLS with a client
certificate and an ACL user, calls pipelined on one connection and matched in order, a late
answer after a timeout dropped, a stalled connection replaced, NOSCRIPT answered with EVAL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.state.resp import Endpoint, RespClient, RespError
from tests.integration.test_pipeline import ES, clients
from tests.support.gateway import base_config
from tests.support.redis_server import RedisServer
from tests.support.tls import TestCA

NO_LIMITS = {"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None}
ACL_USERS = "user default off\nuser gateway on >s3cret-pass ~bearer-gateway:* +@all\n"


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def tls_redis(pki: TestCA, tmp_path: Path) -> Iterator[RedisServer]:
    server_cert = pki.server()
    acl = tmp_path / "users.acl"
    acl.write_text(ACL_USERS)
    server = RedisServer("--aclfile", str(acl), tls=(pki.cert_file, server_cert.cert_file, server_cert.key_file)).start()
    yield server
    server.stop()


def tls_config(upstream, server: RedisServer, tls: dict[str, object], **credentials: str) -> dict[str, object]:
    redis_settings = {"url": server.url, "timeout": "200ms", "tls": tls, **credentials}
    return base_config(upstream.token_url, clients=clients(), rate_limits=NO_LIMITS,
                       state={"backend": "redis", "redis": redis_settings})


async def test_tls_client_certificate_and_acl_user(upstream, gateway_factory, tls_redis, pki, monkeypatch):
    """rediss:// with the CA, a client certificate and an ACL user (secret references): the replay set
    lives in that Redis. A wrong password or no client certificate is 'state unavailable' (503)."""
    monkeypatch.setenv("REDIS_USER", "gateway")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret-pass")
    client = pki.client("bearer-gateway")
    tls = {"ca_file": str(pki.cert_file), "cert_file": str(client.cert_file), "key_file": str(client.key_file)}
    gw = await gateway_factory(tls_config(upstream, tls_redis, tls, username="${REDIS_USER}",
                                          password="${REDIS_PASSWORD}"))
    assertion = ES.assertion()
    assert (await gw.token(assertion))[0] == 200
    assert (await gw.token(assertion))[0] == 400  # the replay, found in Redis
    raw = redis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(pki.cert_file),
                      ssl_certfile=str(client.cert_file), ssl_keyfile=str(client.key_file),
                      username="gateway", password="s3cret-pass")
    assert any(b"jti:" in key for key in raw.keys("bearer-gateway:*"))
    raw.close()

    monkeypatch.setenv("REDIS_PASSWORD", "wrong")
    wrong = await gateway_factory(tls_config(upstream, tls_redis, tls, username="${REDIS_USER}",
                                             password="${REDIS_PASSWORD}"), name="wrong.yaml")
    status, document, _ = await wrong.token(ES.assertion())
    assert (status, document["error"]) == (503, "temporarily_unavailable")

    no_cert = await gateway_factory(tls_config(upstream, tls_redis, {"ca_file": str(pki.cert_file)},
                                               username="${REDIS_USER}", password="${REDIS_PASSWORD}"),
                                    name="no-cert.yaml")
    status, document, _ = await no_cert.token(ES.assertion())
    assert (status, document["error"]) == (503, "temporarily_unavailable")


async def test_calls_are_pipelined_on_one_connection_and_matched_in_order(redis_server):
    client = RespClient(Endpoint(port=redis_server.port), timeout=1.0)
    try:
        answers = await asyncio.gather(*(client.call("ECHO", f"call-{i}") for i in range(300)))
        assert answers == [f"call-{i}".encode() for i in range(300)]
        counts = await asyncio.gather(*(client.call("INCR", "pipelined") for _ in range(300)))
        assert sorted(counts) == list(range(1, 301))
        # Every call went over the one connection (plus the raw client asking).
        raw = redis.Redis(port=redis_server.port)
        assert len(raw.client_list()) == 2
        raw.close()
        with pytest.raises(RespError, match="WRONGTYPE"):  # an error reply, in its place
            await client.call("LPUSH", "pipelined", "x")
        assert await client.call("GET", "pipelined") == b"300"
    finally:
        await client.close()


async def test_late_answer_after_a_timeout_is_dropped(redis_server):
    """The server stalls: the calls time out within the bound; when it resumes, their late answers
    are read and dropped, and the next call gets its own answer on the same connection."""
    client = RespClient(Endpoint(port=redis_server.port), timeout=0.1)
    try:
        assert await client.call("ECHO", "warm") == b"warm"
        redis_server.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(client.call("ECHO", f"late-{i}") for i in range(5)),
                                           return_exceptions=True)
            assert all(isinstance(result, TimeoutError) for result in results), results
            assert time.monotonic() - started < 0.3
        finally:
            redis_server.resume()
        assert await client.call("ECHO", "fresh") == b"fresh"
        assert await client.call("CLIENT", "ID") == await client.call("CLIENT", "ID")  # not reconnected
    finally:
        await client.close()


async def test_stalled_connection_is_replaced_and_a_killed_server_is_reconnected(redis_server):
    client = RespClient(Endpoint(port=redis_server.port), timeout=0.1)
    try:
        first = await client.call("CLIENT", "ID")
        redis_server.pause()
        try:
            deadline = time.monotonic() + 1.5  # calls time out; after STALLED_AFTER (1 s) the connection goes
            while time.monotonic() < deadline:
                with pytest.raises((TimeoutError, RespError)):
                    await client.call("PING")
        finally:
            redis_server.resume()
        second = await client.call("CLIENT", "ID")
        assert second != first
        redis_server.kill()
        with pytest.raises(RespError):
            await client.call("PING")
        await asyncio.to_thread(redis_server.start)
        assert await client.call("PING") == b"PONG"
    finally:
        await client.close()


async def test_a_flushed_script_cache_is_answered_with_eval(upstream, gateway_factory, redis_server):
    cfg = base_config(upstream.token_url, clients=clients(), rate_limits=NO_LIMITS,
                      state={"backend": "redis", "redis": {"url": redis_server.url, "timeout": "200ms"}})
    gw = await gateway_factory(cfg)
    assert (await gw.token(ES.assertion()))[0] == 200
    raw = redis.Redis(port=redis_server.port)
    raw.script_flush()
    raw.config_resetstat()
    assertion = ES.assertion()
    assert (await gw.token(assertion))[0] == 200
    assert (await gw.token(assertion))[0] == 400
    calls = {name: value["calls"] for name, value in raw.info("commandstats").items()}
    assert calls["cmdstat_eval"] == 1 and calls["cmdstat_evalsha"] == 2, calls  # NOSCRIPT, EVAL, then cached
    raw.close()
