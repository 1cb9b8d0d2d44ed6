"""Shared state in Redis: `SET NX PX` for the replay set, one Lua GCRA script per rate decision.

Every call is bounded by `state.redis.timeout`: a Redis that hangs costs a request at most that
long (envoyproxy/ratelimit#462 stalled seconds per request), then the on_error policy decides.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config.model import RedisSettings
from gateway.metrics import metrics
from gateway.state.base import ALLOWED, Cell, Decision, StateUnavailable

# GCRA with Redis' own clock, so every replica and worker agrees on "now". One script, one round
# trip, all cells or none: KEYS = cells; ARGV = interval ms, burst for each cell.
# Returns {allowed, retry_after_ms, refused cell (1-based, 0 = none)}.
_TAKE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return {0, tostring(allow_at - now), i}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
return {1, '0', 0}
"""

# Stages 13-14 in one atomic step: KEYS[1] the (iss, jti) key, KEYS[2] the client's quota cell
# (optional); ARGV = ttl ms[, interval ms, burst]. Returns {status, retry_after_ms} with status
# 1 admitted (jti recorded, quota spent), 0 over quota (nothing recorded), 2 replayed.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {2, '0'}
end
if #KEYS == 2 then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + t[2] / 1000
  local interval = tonumber(ARGV[2])
  local burst = tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return {0, tostring(allow_at - now)}
  end
  redis.call('SET', KEYS[2], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return {1, '0'}
"""

PREFIX = "bearer-gateway:"


class RedisState:
    name = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        self.timeout = settings.timeout
        password = settings.password.get() if settings.password is not None else None
        self._client = aioredis.Redis.from_url(
            settings.url,
            password=password,
            socket_timeout=settings.timeout,
            socket_connect_timeout=max(settings.timeout, 0.5),
            health_check_interval=30,
            max_connections=256,
        )
        self._take = self._client.register_script(_TAKE)
        self._admit = self._client.register_script(_ADMIT)
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

    async def take(self, cells: Sequence[Cell]) -> Decision:
        args: list[float | int] = []
        for cell in cells:
            args += [cell.interval * 1000.0, cell.burst]
        result = await self._call("rate_limit", self._take(keys=[PREFIX + "rl:" + c.key for c in cells], args=args))
        assert isinstance(result, list)
        allowed, retry_ms, refused = result
        if int(allowed):
            return ALLOWED
        return Decision(False, float(retry_ms) / 1000.0, int(refused) - 1)

    async def admit(self, key: str, ttl: float, quota: Cell | None) -> Decision:
        # RFC 7523 §3 item 7: the jti is recorded atomically and expires with the assertion.
        keys = [PREFIX + "jti:" + key]
        args: list[float | int] = [max(1000, math.ceil(ttl * 1000))]
        if quota is not None:
            keys.append(PREFIX + "rl:" + quota.key)
            args += [quota.interval * 1000.0, quota.burst]
        result = await self._call("admit", self._admit(keys=keys, args=args))
        assert isinstance(result, list)
        status, retry_ms = int(result[0]), float(result[1]) / 1000.0
        if status == 1:
            return ALLOWED
        if status == 2:
            return Decision(False, replayed=True)
        return Decision(False, retry_ms, 0)

    async def ping(self) -> bool:
        try:
            await self._call("ping", self._client.ping())
        except StateUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()
