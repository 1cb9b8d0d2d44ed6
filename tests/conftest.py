"""Shared fixtures: a recording upstream AS and a gateway started on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import RunningGateway, start_gateway
from tests.support.upstream import RecordingUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = await RecordingUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    started: list[RunningGateway] = []

    async def start(config: dict[str, Any], name: str = "gateway.yaml") -> RunningGateway:
        running = await start_gateway(config, tmp_path, name)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
def redis_server():
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()
