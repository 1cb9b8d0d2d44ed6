"""Shared state in Redis: `SET NX PX` for the replay set, one Lua GCRA script per rate decision.

Every call is bounded by `state.redis.timeout`: a Redis that hangs costs a request at most that
long (envoyproxy/ratelimit#462 stalled seconds per request), then the on_error policy decides.
"""

from __future__ import annotations

import asyncio
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config.model import RedisSettings
from gateway.metrics import metrics
from gateway.state.base import Decision, StateUnavailable

# GCRA with Redis' own clock, so every replica and worker agrees on "now" (one round trip).
# KEYS[1] cell; ARGV[1] interval ms; ARGV[2] burst. Returns {allowed, retry_after_ms}.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, tostring(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, '0'}
"""

PREFIX = "bearer-gateway:"


class RedisState:
    name = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        self.timeout = settings.timeout
        password = settings.password.get() if settings.password is not None else None
        self._client = aioredis.Redis.from_url(
            settings.url, password=password, socket_timeout=settings.timeout,
            socket_connect_timeout=max(settings.timeout, 0.5), health_check_interval=30,
            max_connections=256,
        )
        self._gcra = self._client.register_script(_GCRA)
        self._latency = metrics().state_duration

    async def _call(self, operation: str, coroutine: object) -> object:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await coroutine  # type: ignore[misc]
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateUnavailable(f"redis {operation}: {type(exc).__name__}") from None
        finally:
            self._latency.labels(operation).observe(time.perf_counter() - started)
        return result

    async def claim_once(self, key: str, ttl: float) -> bool:
        # RFC 7523 §3 item 7: atomic set-if-absent, expiring with the assertion.
        result = await self._call(
            "replay", self._client.set(PREFIX + "jti:" + key, b"1", nx=True, px=max(1000, math.ceil(ttl * 1000)))
        )
        return bool(result)

    async def take(self, key: str, interval: float, burst: int) -> Decision:
        result = await self._call(
            "rate_limit", self._gcra(keys=[PREFIX + "rl:" + key], args=[interval * 1000.0, burst])
        )
        assert isinstance(result, list)
        allowed, retry_ms = result
        return Decision(bool(int(allowed)), float(retry_ms) / 1000.0)

    async def ping(self) -> bool:
        try:
            await self._call("ping", self._client.ping())
        except StateUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()
