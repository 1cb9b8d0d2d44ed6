"""Shared state in Redis (single, Sentinel or Cluster): one Lua script per decision, Redis' clock.

Every call is bounded by `state.redis.timeout`: a Redis that hangs costs a request at most that
long (envoyproxy/ratelimit#462 stalled seconds per request), then the on_error policy decides.

Key layout (README, "Redis topologies, key layout, failover and clocks"):
`<prefix>{<tag>}<kind>:<name>`. The keys of one script share the hash tag, so on Cluster each atomic
decision lives in one slot:
  - `take`: every cell of the call carries the tag of the call's last cell (`request_limits`: the global
    cell, so per-IP and global decide together; a lone per-issuer cell is its own tag);
  - `admit`: the client's jtis and its quota cell carry `{c:<client id>}`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import ssl
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url

from gateway.config.model import RedisSettings
from gateway.metrics import metrics
from gateway.state.base import ALLOWED, Cell, Decision, StateUnavailable
from gateway.state.resp import ClusterClient, Endpoint, RespClient, RespError
from gateway.state.scripts import Script

log = logging.getLogger("bearer_gateway.state")

# Undoing an admit whose answer was lost: first after one timeout (the admit has most likely run
# by then), then backing off; after that the jti stays recorded (the safe side: never a replay).
RELEASE_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)
MAX_PENDING_RELEASES = 1000


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(settings: RedisSettings, *, url_says_tls: bool = False) -> ssl.SSLContext | None:
    """The TLS context for Redis and the sentinels: `state.redis.tls`, or the defaults for a rediss:// URL."""
    t = settings.tls
    if t is None:
        return ssl.create_default_context() if url_says_tls else None
    context = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
    if t.cert_file and t.key_file:
        context.load_cert_chain(str(t.cert_file), str(t.key_file))
    if not t.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def lean_client(settings: RedisSettings) -> RespClient | ClusterClient:
    """The client (gateway/state/resp.py) for mode single (the URL), sentinel (the primary they name)
    or cluster (each slot's primary)."""
    username = settings.username.get() if settings.username is not None else None
    password = settings.password.get() if settings.password is not None else None
    if settings.mode == "cluster":
        template = Endpoint(ssl=tls_context(settings), username=username, password=password)
        return ClusterClient([_host_port(node) for node in settings.nodes], template, settings.timeout)
    if settings.mode == "sentinel":
        context = tls_context(settings)
        sentinel = Endpoint(
            ssl=context,
            username=settings.sentinel_username.get() if settings.sentinel_username is not None else None,
            password=settings.sentinel_password.get() if settings.sentinel_password is not None else None,
        )
        primary = Endpoint(ssl=context, username=username, password=password, db=settings.db)
        return RespClient(primary, settings.timeout, sentinels=[_host_port(a) for a in settings.sentinels],
                          service_name=settings.service_name, sentinel_endpoint=sentinel)
    url = parse_url(settings.url)  # as redis-py reads it (redis://, rediss://, unix://); its user and password win
    endpoint = Endpoint(
        host=str(url.get("host", "127.0.0.1")),
        port=int(url.get("port", 6379)),
        path=url.get("path"),
        ssl=tls_context(settings, url_says_tls=settings.url.startswith("rediss:")),
        username=url.get("username", username),
        password=url.get("password", password),
        db=int(url.get("db", 0)),
    )
    return RespClient(endpoint, settings.timeout)


class RedisState:
    name = "redis"

    def __init__(self, settings: RedisSettings, *, clock: str | None = None) -> None:
        """`clock` replaces lua/clock.lua (a Lua chunk defining `now_us()`); tests only."""
        self.timeout = settings.timeout
        self.prefix = settings.prefix
        self._client = lean_client(settings)
        # WAIT after an admission: the jti is on that many replicas before the request goes on.
        self.wait_replicas = settings.replay_wait_replicas
        self._wait_ms = max(1, int(settings.timeout * 1000 * 0.8))  # WAIT gives up inside the call's bound
        self._take = Script("take", clock)
        self._admit = Script("admit", clock)
        self._release = Script("release", clock)
        m = metrics()  # observations tallied off the hot path (metrics.Tally)
        self._observe = {name: partial(m.observe, m.state_duration.labels(name))
                         for name in ("rate_limit", "admit", "release", "ping")}
        # Tokens name one admit attempt (a release undoes exactly that one): random per process,
        # then a counter; hex digits only, so never the tombstone mark 'x'.
        self._token_base = secrets.token_hex(6)
        self._tokens = itertools.count()
        self._releases: set[asyncio.Task[None]] = set()

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any], wait: bool) -> Any:
        """EVALSHA (then EVAL on NOSCRIPT: a new primary's empty script cache), with WAIT on the same
        connection when asked (on Cluster: the node that ran the script), all inside one deadline;
        (result, replicas that acknowledged) when `wait`."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        client = self._client
        if not wait:
            reply = await client.execute(("EVALSHA", script.sha, len(keys), *keys, *args), deadline, keys[0])
            if reply.__class__ is hiredis.ReplyError and str(reply).startswith("NOSCRIPT"):
                reply = await client.execute(("EVAL", script.source, len(keys), *keys, *args), deadline, keys[0])
            if reply.__class__ is hiredis.ReplyError:
                raise RespError(str(reply))
            return reply
        commands: list[tuple[Any, ...]] = [("EVALSHA", script.sha, len(keys), *keys, *args),
                                           ("WAIT", self.wait_replicas, self._wait_ms)]
        replies = await client.pipeline(commands, deadline, keys[0])
        if isinstance(replies[0], hiredis.ReplyError) and str(replies[0]).startswith("NOSCRIPT"):
            commands[0] = ("EVAL", script.source, len(keys), *keys, *args)
            replies = await client.pipeline(commands, deadline, keys[0])
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RespError(str(reply))
        return replies[0], int(replies[1])

    async def _call(self, operation: str, script: Script, keys: Sequence[str], args: Sequence[Any],
                    wait: bool = False) -> Any:
        started = time.perf_counter()
        try:
            result = await self._eval(script, keys, args, wait)
            if wait:
                result, acknowledged = result
                if acknowledged < self.wait_replicas and result[0] == 1:
                    raise ReplicasBehind(f"{acknowledged} of {self.wait_replicas} replicas acknowledged")
            return result
        except (TimeoutError, RespError, OSError) as exc:
            raise StateUnavailable(f"redis {operation}: {type(exc).__name__}") from None
        except Exception as exc:  # a fault of the client itself is an outage too, never a 500
            log.debug("redis %s: %r", operation, exc)
            raise StateUnavailable(f"redis {operation}: {type(exc).__name__}") from None
        finally:
            self._observe[operation](time.perf_counter() - started)

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
            await self._client.call("PING")
        except (TimeoutError, RespError, OSError):
            return False
        finally:
            self._observe["ping"](time.perf_counter() - started)
        return True

    async def close(self) -> None:
        for task in list(self._releases):
            task.cancel()
        await self._client.close()


class ReplicasBehind(RespError):
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
