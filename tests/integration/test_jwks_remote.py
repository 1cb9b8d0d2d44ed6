"""RemoteJWKS against a real JWKS server on 127.0.0.1: rotation, cooldown, stale-if-error, caps, TTL."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.jose.jwks_remote import RemoteJWKS, RemoteJWKSSettings
from gateway.jose.jws import b64url_encode, parse_compact
from gateway.jose.keys import VerificationKey
from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key

pytestmark = pytest.mark.asyncio


@cache
def signer(kid: str, alg: str = "ES256") -> SigningKey:
    return load_signing_key(generate_private_key_pem(alg), alg=alg, kid=kid, source="test")


def jwks(*kids: str) -> dict[str, Any]:
    return {"keys": [signer(kid).public_jwk() for kid in kids]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JWKSServer:
    """A real HTTP JWKS endpoint whose answer a test can change, counting every request."""

    def __init__(self) -> None:
        self.document: Any = jwks("k1")
        self.body: bytes | None = None  # overrides document when set
        self.status = 200
        self.delay = 0.0
        self.chunked = False
        self.headers: dict[str, str] = {}
        self.hits = 0
        self.redirect_target_hits = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = self.body if self.body is not None else json.dumps(self.document).encode()
        if self.status in (301, 302, 307):
            raise web.HTTPFound("/other.json")
        if self.chunked:
            # No Content-Length: the client has to count what it reads.
            response = web.StreamResponse(status=self.status, headers=self.headers)
            response.content_type = "application/json"
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 1000):
                await response.write(body[start : start + 1000])
            await response.write_eof()
            return response
        return web.Response(status=self.status, body=body, content_type="application/json", headers=self.headers)

    async def _other(self, request: web.Request) -> web.Response:
        self.redirect_target_hits += 1
        return web.json_response(jwks("k1", "k2"))

    async def start(self) -> JWKSServer:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_get("/other.json", self._other)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)  # do not wait out slow handlers
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def server() -> AsyncIterator[JWKSServer]:
    running = await JWKSServer().start()
    yield running
    await running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


class Remote:
    """A started RemoteJWKS plus the outcomes it reported through on_fetch."""

    def __init__(self, server: JWKSServer, **settings: Any) -> None:
        self.outcomes: list[str] = []
        self.jwks = RemoteJWKS(
            RemoteJWKSSettings(uri=server.url, **settings),
            source="clients[0].keys.jwks_uri",
            on_fetch=self.outcomes.append,
        )


@pytest.fixture
async def remotes() -> AsyncIterator[list[Remote]]:
    made: list[Remote] = []
    yield made
    for remote in made:
        await remote.jwks.close()


async def started(remotes: list[Remote], server: JWKSServer, session: aiohttp.ClientSession, **settings: Any) -> Remote:
    remote = Remote(server, **settings)
    remotes.append(remote)
    await remote.jwks.start(session)
    return remote


def verifies(key: VerificationKey | None, kid: str) -> bool:
    jws = parse_compact(signer(kid).sign({"iss": "acme"}), max_header_bytes=1024, max_payload_bytes=1024)
    return key is not None and key.verify(jws.signing_input, jws.signature)


async def test_first_fetch_loads_the_keys(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session)
    assert (server.hits, remote.jwks.fetches, remote.outcomes) == (1, 1, ["ok"])
    assert remote.jwks.last_error is None
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert await remote.jwks.select(None) is not None  # one key: a kid-less token may use it
    assert server.hits == 1  # served from the cache


async def test_rotation_is_picked_up_by_an_unknown_kid(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session, refresh_cooldown=0.3)
    server.document = jwks("k1", "k2")  # the client rotates in a new key
    await asyncio.sleep(0.35)
    key = await remote.jwks.select("k2")
    assert verifies(key, "k2")
    assert server.hits == 2
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert server.hits == 2


async def test_a_burst_of_unknown_kids_costs_one_fetch_per_cooldown(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    cooldown = 0.5
    remote = await started(remotes, server, session, refresh_cooldown=cooldown)
    await asyncio.sleep(cooldown + 0.05)
    server.delay = 0.1  # the burst arrives while the one fetch is under way
    results = await asyncio.gather(*(remote.jwks.select(f"forged-{i}") for i in range(50)))
    assert results == [None] * 50
    assert server.hits == 2  # one fetch for the burst, not 50
    assert remote.jwks.fetches == 2

    # Inside the cooldown another unknown kid is answered at once, without a fetch
    # (a fetch would take the server's 0.5 s delay).
    server.delay = 0.5
    began = time.monotonic()
    assert await remote.jwks.select("forged-late") is None
    assert time.monotonic() - began < 0.25
    assert server.hits == 2
    assert verifies(await remote.jwks.select("k1"), "k1")  # known kids keep working
    server.delay = 0.0

    # After the cooldown, the next unknown kid triggers exactly one more fetch.
    server.document = jwks("k1", "k3")
    await asyncio.sleep(cooldown + 0.05)
    results = await asyncio.gather(*(remote.jwks.select("k3") for _ in range(20)))
    assert all(verifies(key, "k3") for key in results)
    assert server.hits == 3
    assert await remote.jwks.select("forged-again") is None
    assert server.hits == 3


async def test_server_stopped_keeps_cached_keys(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote], caplog: pytest.LogCaptureFixture
) -> None:
    remote = await started(remotes, server, session, ttl=0.3, refresh_cooldown=0.3)
    await server.stop()
    await asyncio.sleep(0.35)
    with caplog.at_level(logging.WARNING, logger="bearer_gateway.jwks"):
        key = await remote.jwks.select("k1")  # TTL passed: the refresh fails
    assert verifies(key, "k1")  # stale-if-error
    assert remote.jwks.fetches == 2
    assert remote.jwks.last_error is not None
    assert "Connect" in remote.jwks.last_error
    assert remote.outcomes == ["ok", "error"]
    records = [r for r in caplog.records if r.name == "bearer_gateway.jwks" and r.levelno >= logging.WARNING]
    assert len(records) == 1
    assert "clients[0].keys.jwks_uri" in records[0].getMessage()
    assert "keeping 1 key(s)" in records[0].getMessage()

    # The failure does not put a fetch on every request: the next try waits for the cooldown.
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert await remote.jwks.select("k2") is None
    assert remote.jwks.fetches == 2

    # The server comes back: the next refresh after the cooldown recovers.
    server.document = jwks("k1", "k2")
    await server.start()
    await asyncio.sleep(0.35)
    assert verifies(await remote.jwks.select("k2"), "k2")
    assert remote.jwks.last_error is None
    assert remote.outcomes == ["ok", "error", "ok"]


async def test_nothing_cached_when_the_first_fetch_fails(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    server.status = 503
    remote = await started(remotes, server, session, refresh_cooldown=0.2)
    assert remote.jwks.last_error == "HTTP 503"
    assert len(remote.jwks.keys) == 0
    assert await remote.jwks.select("k1") is None
    assert server.hits == 1  # start() never raised, and no retry inside the cooldown
    server.status = 200
    await asyncio.sleep(0.25)
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert server.hits == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_jwks_is_refused_and_keys_stay(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote], chunked: bool
) -> None:
    remote = await started(remotes, server, session, max_bytes=4096, ttl=0.2, refresh_cooldown=0.2)
    big = jwks("k1", "k2")
    big["padding"] = "x" * 10_000
    server.document = big
    server.chunked = chunked
    await asyncio.sleep(0.25)
    assert await remote.jwks.select("k2") is None
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert remote.jwks.last_error == "body larger than 4096 bytes"
    assert remote.outcomes == ["ok", "error"]
    assert remote.jwks.fetches == 2


async def test_jwks_at_the_size_cap_is_accepted(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    body = json.dumps(jwks("k1")).encode()
    server.body = body + b" " * (3000 - len(body))
    server.chunked = True
    remote = await started(remotes, server, session, max_bytes=3000)
    assert remote.jwks.last_error is None
    assert len(remote.jwks.keys) == 1


def rsa_1024_jwk() -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": "weak",
        "alg": "RS256",
        "n": b64url_encode(numbers.n.to_bytes(128, "big")),
        "e": "AQAB",
    }


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "HTTP 404"),
        ({"status": 302}, "HTTP 302"),  # RFC 8725 §3.10: redirects are not followed
        ({"body": b"{not json"}, "body is not UTF-8 JSON"),
        ({"body": b'{"keys":[]}\xff'}, "body is not UTF-8 JSON"),
        ({"body": b"[]"}, "body is not a JSON object"),
        ({"body": b'{"keys":"x"}'}, 'a JWKS must be an object with a "keys" array'),
        ({"document": {"keys": [rsa_1024_jwk()]}}, "RSA key is 1024 bits, at least 2048 required"),
        ({"document": {"keys": [{**jwks("k2")["keys"][0], "d": "AAAA"}]}}, "private key member(s) d"),
        (
            {"body": gzip.compress(json.dumps(jwks("k1", "k2")).encode()), "headers": {"Content-Encoding": "gzip"}},
            "unexpected Content-Encoding 'gzip'",
        ),
    ],
)
async def test_bad_answers_keep_the_previous_keys(
    server: JWKSServer,
    session: aiohttp.ClientSession,
    remotes: list[Remote],
    change: dict[str, Any],
    error: str,
) -> None:
    remote = await started(remotes, server, session, ttl=0.2, refresh_cooldown=0.2)
    for name, value in change.items():
        setattr(server, name, value)
    await asyncio.sleep(0.25)
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert remote.jwks.last_error is not None
    assert error in remote.jwks.last_error
    assert remote.outcomes == ["ok", "error"]
    assert server.redirect_target_hits == 0


async def test_fetch_timeout_keeps_keys(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session, timeout=0.2, ttl=0.2, refresh_cooldown=0.2)
    server.delay = 2.0
    await asyncio.sleep(0.25)
    began = time.monotonic()
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert time.monotonic() - began < 1.0  # bounded by the 0.2 s total timeout
    assert remote.jwks.last_error is not None
    assert "Timeout" in remote.jwks.last_error
    assert remote.outcomes == ["ok", "error"]


async def test_ttl_refresh(server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]) -> None:
    remote = await started(remotes, server, session, ttl=0.3, refresh_cooldown=10.0)
    server.document = jwks("k2")  # k1 retired, k2 added
    assert verifies(await remote.jwks.select("k1"), "k1")  # still inside the TTL
    assert server.hits == 1
    await asyncio.sleep(0.35)
    assert verifies(await remote.jwks.select("k2"), "k2")  # TTL passed: refreshed
    assert server.hits == 2
    assert await remote.jwks.select("k1") is None  # retired, and the cooldown holds
    assert server.hits == 2


async def test_ttl_refresh_is_single_flight(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session, ttl=0.2, refresh_cooldown=0.0)
    server.delay = 0.1
    await asyncio.sleep(0.25)
    results = await asyncio.gather(*(remote.jwks.select("k1") for _ in range(50)))
    assert all(verifies(key, "k1") for key in results)
    assert server.hits == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session, refresh_cooldown=0.0)
    server.document = jwks("k1", "k2")
    server.delay = 0.2
    first = asyncio.create_task(remote.jwks.select("k2"))
    second = asyncio.create_task(remote.jwks.select("k2"))
    await asyncio.sleep(0.05)
    first.cancel()  # e.g. its client disconnected
    assert verifies(await second, "k2")
    assert first.cancelled()
    assert server.hits == 2
    assert remote.outcomes == ["ok", "ok"]


async def test_close_cancels_a_fetch_and_stops_fetching(
    server: JWKSServer, session: aiohttp.ClientSession, remotes: list[Remote]
) -> None:
    remote = await started(remotes, server, session, ttl=0.1, refresh_cooldown=0.0)
    server.delay = 5.0
    await asyncio.sleep(0.15)
    waiter = asyncio.create_task(remote.jwks.select("k1"))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    await remote.jwks.close()
    assert time.monotonic() - began < 1.0
    assert verifies(await waiter, "k1")  # the waiter gets the cached key, not an exception
    hits = server.hits
    assert verifies(await remote.jwks.select("k1"), "k1")
    assert await remote.jwks.select("k9") is None
    assert server.hits == hits


async def test_select_before_start_is_empty_and_fetches_nothing(server: JWKSServer) -> None:
    remote = RemoteJWKS(RemoteJWKSSettings(uri=server.url), source="s")
    assert await remote.select("k1") is None
    assert (remote.fetches, server.hits) == (0, 0)


async def test_settings_refuse_non_http_uris() -> None:
    for uri in ("file:///etc/passwd", "ftp://x/jwks", "jwks.json"):
        with pytest.raises(ValueError, match="http"):
            RemoteJWKSSettings(uri=uri)
    with pytest.raises(ValueError):
        RemoteJWKSSettings(uri="https://x/jwks", max_bytes=0)
