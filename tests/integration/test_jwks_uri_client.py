"""A client whose keys come from a jwks_uri served by a real HTTP server started by the test."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.support.gateway import base_config
from tests.support.keys import client_key

OLD = client_key("rotating", "ES256", kid="k1")
NEW = client_key("rotating", "ES256", kid="k2")


class JWKSServer:
    def __init__(self) -> None:
        self.document = {"keys": [OLD.signer.public_jwk()]}
        self.fetches = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response(self.document)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_rotation_cooldown_and_stale_keys(upstream, gateway_factory):
    jwks = JWKSServer()
    await jwks.start()
    try:
        entry = {"client_id": "rotating", "keys": {"jwks_uri": f"http://127.0.0.1:{jwks.port}/jwks.json",
                                                    "refresh_cooldown": "1s", "ttl": "10m"}}
        gw = await gateway_factory(base_config(upstream.token_url, clients=[entry]))
        assert jwks.fetches == 1  # fetched at start
        assert (await gw.token(OLD.assertion()))[0] == 200
        assert jwks.fetches == 1  # served from the cache

        # The client rotates to k2: once the cooldown since the last fetch has passed, the unknown kid
        # triggers one refresh.
        await asyncio.sleep(1.1)
        jwks.document = {"keys": [OLD.signer.public_jwk(), NEW.signer.public_jwk()]}
        assert (await gw.token(NEW.assertion()))[0] == 200
        assert jwks.fetches == 2

        # A burst of made-up kids within the cooldown costs no fetch at all.
        from tests.integration.test_pipeline import resigned_header

        for i in range(20):
            status, document, _ = await gw.token(resigned_header(NEW, {"alg": "ES256", "kid": f"made-up-{i}"}))
            assert (status, document["error"]) == (401, "invalid_client")
        assert jwks.fetches == 2

        # The JWKS server goes away: cached keys keep working.
        await jwks.stop()
        assert (await gw.token(OLD.assertion()))[0] == 200
        assert (await gw.token(NEW.assertion()))[0] == 200
        async with gw.session.get(gw.admin_url + "/metrics") as response:
            text = await response.text()
        assert 'bearer_gateway_jwks_fetches_total{client="rotating",outcome="ok"} 2.0' in text
    finally:
        if jwks.runner is not None:
            await jwks.runner.cleanup()
