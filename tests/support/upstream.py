"""A real HTTP authorization-server stand-in that records every request reaching it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class RecordingUpstream:
    """Answers every request with `status`/`body` after `delay` seconds and keeps what it saw."""

    status: int = 200
    body: bytes = b'{"access_token":"at-123","token_type":"Bearer","expires_in":300}'
    content_type: str = "application/json"
    extra_headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Content-Type": self.content_type, **self.extra_headers}
        return web.Response(status=self.status, body=self.body, headers=headers)

    def answer_json(self, status: int, document: dict[str, Any]) -> None:
        self.status = status
        self.body = json.dumps(document).encode()

    async def start(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/camara/protocol/openid-connect/token"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
