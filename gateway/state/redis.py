"""Shared state in Redis (single, Sentinel or Cluster): one Lua script per decision, Redis' clock.

Every call is bounded by `state.redis.timeout`: a Redis that hangs costs a request at most that
long (envoyproxy/ratelimit#462 stalled seconds per request), then the on_error policy decides.

Key layout (README, "Shared state in Redis"): `<prefix>{<tag>}<kind>:<name>`. The keys of one
script share the hash tag, so on Cluster each atomic decision lives in one slot:
  - `take`: every cell of the call carries the tag of the call's last cell (stage 5: the global
    cell, so per-IP and global decide together; a lone per-issuer cell is its own tag);
  - `admit`: the client's jtis and its quota cell carry `{c:<client id>}`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.config.model import RedisSettings
from gateway.metrics import metrics
from gateway.state.base import ALLOWED, Cell, Decision, StateUnavailable
from gateway.state.scripts import Script

log = logging.getLogger("bearer_gateway.state")

# Undoing an admit whose answer was lost: first after one timeout (the admit has most likely run
# by then), then backing off; after that the jti stays recorded (the safe side: never a replay).
RELEASE_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)
MAX_PENDING_RELEASES = 1000


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def connect(settings: RedisSettings) -> Any:
    """A redis-py asyncio client for the configured mode (single URL, Sentinel primary, Cluster)."""
    options: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": max(settings.timeout, 0.5),
        "health_check_interval": 30,
        "max_connections": 256,
    }
    if settings.username is not None:
        options["username"] = settings.username.get()
    if settings.password is not None:
        options["password"] = settings.password.get()
    tls: dict[str, Any] = {}
    if settings.tls is not None:
        t = settings.tls
        tls = {
            "ssl": True,
            "ssl_ca_certs": str(t.ca_file) if t.ca_file else None,
            "ssl_certfile": str(t.cert_file) if t.cert_file else None,
            "ssl_keyfile": str(t.key_file) if t.key_file else None,
            "ssl_cert_reqs": "required" if t.verify else "none",
            "ssl_check_hostname": t.verify,
        }
    if settings.mode == "cluster":
        nodes = [ClusterNode(*_host_port(node)) for node in settings.nodes]
        options["max_connections"] = 64  # per node
        # A refused connection or MOVED re-reads the slot map and tries again, inside the call's timeout.
        return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 2), **options, **tls)
    if settings.mode == "sentinel":
        sentinel_options: dict[str, Any] = {
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": max(settings.timeout, 0.5),
            **tls,
        }
        if settings.sentinel_username is not None:
            sentinel_options["username"] = settings.sentinel_username.get()
        if settings.sentinel_password is not None:
            sentinel_options["password"] = settings.sentinel_password.get()
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [_host_port(address) for address in settings.sentinels],
            sentinel_kwargs=sentinel_options,
            **options,
            **tls,
        )
        return sentinel.master_for(settings.service_name, db=settings.db)
    if tls:
        options.update(tls)
    return aioredis.Redis.from_url(settings.url, **options)


class RedisState:
    name = "redis"

    def __init__(self, settings: RedisSettings, *, clock: str | None = None) -> None:
        """`clock` replaces lua/clock.lua (a Lua chunk defining `now_us()`); tests only."""
        self.timeout = settings.timeout
        self.prefix = settings.prefix
        self._client = connect(settings)
        self.cluster = settings.mode == "cluster"
        # WAIT after an admission: the jti is on that many replicas before the request goes on.
        self.wait_replicas = settings.replay_wait_replicas
        self._wait_ms = max(1, int(settings.timeout * 1000 * 0.8))  # WAIT gives up inside the call's bound
        self._take = Script("take", clock)
        self._admit = Script("admit", clock)
        self._release = Script("release", clock)
        self._latency = metrics().state_duration
        # Tokens name one admit attempt (a release undoes exactly that one): random per process,
        # then a counter; hex digits only, so never the tombstone mark 'x'.
        self._token_base = secrets.token_hex(6)
        self._tokens = itertools.count()
        self._releases: set[asyncio.Task[None]] = set()

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A new primary (failover) or a restarted node has an empty script cache: EVAL loads it.
            return await self._client.eval(script.source, len(keys), *keys, *args)

    async def _eval_and_wait(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script, then WAIT on the same connection (one round trip): (result, replicas that acknowledged)."""
        for command, name in (("EVALSHA", script.sha), ("EVAL", script.source)):
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command(command, name, len(keys), *keys, *args)
            wait = ("WAIT", self.wait_replicas, self._wait_ms)
            if self.cluster:  # WAIT names no key: send it to the node that ran the script
                pipe.execute_command(*wait, target_nodes=self._client.get_node_from_key(keys[0]))
            else:
                pipe.execute_command(*wait)
            result, acknowledged = await pipe.execute(raise_on_error=False)
            if not isinstance(result, NoScriptError):
                break  # else: a new primary's empty script cache (EVAL loads it)
        for answer in (result, acknowledged):
            if isinstance(answer, Exception):
                raise answer
        return result, int(acknowledged)

    async def _call(self, operation: str, script: Script, keys: Sequence[str], args: Sequence[Any],
                    wait: bool = False) -> Any:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                if wait:
                    result, acknowledged = await self._eval_and_wait(script, keys, args)
                    if acknowledged < self.wait_replicas and result[0] == 1:
                        raise ReplicasBehind(f"{acknowledged} of {self.wait_replicas} replicas acknowledged")
                    return result
                return await self._eval(script, keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateUnavailable(f"redis {operation}: {type(exc).__name__}") from None
        except Exception as exc:  # the client's own faults in a failover are an outage too
            # (redis-py 8.1 raises AttributeError writing to a connection another task closed.)
            log.debug("redis %s: %r", operation, exc)
            raise StateUnavailable(f"redis {operation}: {type(exc).__name__}") from None
        finally:
            self._latency.labels(operation).observe(time.perf_counter() - started)

    def cell_keys(self, cells: Sequence[Cell]) -> list[str]:
        head = f"{self.prefix}{{{cells[-1].key}}}rl:"
        return [head + cell.key for cell in cells]

    def admit_keys(self, scope: str, jti: str, quota: Cell | None) -> list[str]:
        head = f"{self.prefix}{{c:{scope}}}"
        keys = [f"{head}jti:{jti}"]
        if quota is not None:
            keys.append(f"{head}rl:{quota.key}")
        return keys

    async def take(self, cells: Sequence[Cell]) -> Decision:
        args: list[int] = []
        for cell in cells:
            args += [cell.interval_us, cell.burst]
        allowed, retry_us, refused = await self._call("rate_limit", self._take, self.cell_keys(cells), args)
        if allowed:
            return ALLOWED
        return Decision(False, int(retry_us) / 1_000_000, int(refused) - 1)

    async def admit(self, scope: str, jti: str, ttl: float, quota: Cell | None) -> Decision:
        # RFC 7523 §3 item 7: the jti is recorded atomically and expires with the assertion.
        keys = self.admit_keys(scope, jti, quota)
        token = f"{self._token_base}{next(self._tokens):x}"
        args: list[int | str] = [max(1000, math.ceil(ttl * 1000)), token]
        if quota is not None:
            args += [quota.interval_us, quota.burst]
        try:
            status, retry_us = await self._call("admit", self._admit, keys, args, wait=self.wait_replicas > 0)
        except StateUnavailable as exc:
            # The script may have run although its answer never came: undo it unless kept.
            raise AdmitUnanswered(str(exc), self._undo(keys, args)) from None
        if status == 1:
            return ALLOWED
        if status == 2:
            return Decision(False, replayed=True)
        return Decision(False, int(retry_us) / 1_000_000, 0)

    def _undo(self, keys: list[str], args: list[int | str]) -> _Release | None:
        if len(self._releases) >= MAX_PENDING_RELEASES:
            return None  # under a long outage: the jti may stay recorded (refused as a replay, never reused)
        release = _Release()
        task = asyncio.get_running_loop().create_task(self._run_release(release, keys, args))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        return release

    async def _run_release(self, release: _Release, keys: list[str], args: list[int | str]) -> None:
        await asyncio.sleep(self.timeout)  # let the caller decide (keep) and the late admit land
        for delay in RELEASE_DELAYS:
            if release.kept:
                return
            await asyncio.sleep(delay)
            try:
                await self._call("release", self._release, keys, args)
            except StateUnavailable:
                continue
            return
        log.warning("an admission whose answer was lost could not be undone; its jti stays recorded")

    async def ping(self) -> bool:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.ping()
        except (TimeoutError, RedisError, OSError):
            return False
        finally:
            self._latency.labels("ping").observe(time.perf_counter() - started)
        return True

    async def close(self) -> None:
        for task in list(self._releases):
            task.cancel()
        await self._client.aclose()


class ReplicasBehind(RedisError):
    """WAIT timed out before `state.redis.replay_wait_replicas` replicas had the admission."""


class _Release:
    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept = False


class AdmitUnanswered(StateUnavailable):
    """The admit call failed after it may have reached Redis; undone in the background unless kept."""

    def __init__(self, message: str, release: _Release | None) -> None:
        super().__init__(message)
        self._release = release

    def keep(self) -> None:
        if self._release is not None:
            self._release.kept = True
