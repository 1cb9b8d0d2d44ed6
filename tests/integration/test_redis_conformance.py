"""One GCRA, two backends: the same sequences against memory and a real redis-server, the same decisions.

The Lua in gateway/state/lua/ and gateway/state/memory.py implement the algorithm twice by
necessity (Redis runs Lua, the memory backend Python); this suite holds them equal. Both run on a
test clock (integer microseconds) so that decisions are exact and repeatable: the memory backend
takes a clock function, the Redis scripts a replacement for lua/clock.lua that reads the time from
a key. Hypothesis drives random sequences through both and compares every decision.
"""

from __future__ import annotations

import asyncio
import itertools
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.model import RedisSettings
from gateway.state.base import Cell, Decision
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState
from gateway.state.scripts import lua
from tests.support.redis_server import RedisServer

CLOCK_KEY = "conformance:clock"
TEST_CLOCK = f"local function now_us() return tonumber(redis.call('GET', '{CLOCK_KEY}')) end"
START_US = 1_700_000_000_000_000  # a realistic Redis TIME in microseconds (exactness near 2^53 matters)
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_module() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


class Clocked:
    """A backend on the test clock."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.now = START_US
        self.memory = MemoryState(clock=lambda: self.now * 1000) if kind == "memory" else None
        # A fresh prefix per sequence: no state leaks between examples sharing the server.
        redis_settings = RedisSettings(url=url, timeout="2s", prefix=f"conformance{next(_prefixes)}:")
        self.redis = RedisState(redis_settings, clock=TEST_CLOCK) if kind == "redis" else None
        self.raw = aioredis.Redis.from_url(url) if kind == "redis" else None

    @property
    def state(self) -> MemoryState | RedisState:
        backend = self.memory if self.memory is not None else self.redis
        assert backend is not None
        return backend

    async def set_clock(self) -> None:
        if self.raw is not None:
            await self.raw.set(CLOCK_KEY, self.now)

    async def advance(self, us: int) -> None:
        self.now += us
        await self.set_clock()

    async def take(self, cells: list[Cell]) -> Decision:
        return await self.state.take(cells)

    async def admit(self, scope: str, jti: str, quota: Cell | None, ttl: float = 3600.0) -> Decision:
        return await self.state.admit(scope, jti, ttl, quota)

    async def close(self) -> None:
        await self.state.close()
        if self.raw is not None:
            await self.raw.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_module: RedisServer) -> AsyncIterator[Clocked]:
    clocked = Clocked(request.param, redis_module.url)
    await clocked.set_clock()
    yield clocked
    await clocked.close()


def seconds(us: int) -> float:
    return us / 1_000_000


async def test_take_is_all_or_nothing(backend: Clocked) -> None:
    narrow, wide = Cell("narrow", 60.0, 1), Cell("wide", 60.0, 5)
    assert (await backend.take([narrow, wide])).allowed
    assert await backend.take([narrow, wide]) == Decision(False, 60.0, 0)
    # The refused request moved neither cell: "wide" (last, so the same cell alone) still has 4 of its 5.
    assert [(await backend.take([wide])).allowed for _ in range(5)] == [True] * 4 + [False]


async def test_gcra_refills_one_interval_at_a_time(backend: Clocked) -> None:
    cell = Cell("per_ip:192.0.2.1", 1.0, 3)
    assert [(await backend.take([cell])).allowed for _ in range(3)] == [True] * 3
    assert await backend.take([cell]) == Decision(False, 1.0, 0)
    await backend.advance(400_000)
    assert await backend.take([cell]) == Decision(False, 0.6, 0)  # exact: integer microseconds
    await backend.advance(600_000)
    assert (await backend.take([cell])).allowed
    assert await backend.take([cell]) == Decision(False, 1.0, 0)
    await backend.advance(10_000_000)  # long idle: back to the full burst, never more
    assert [(await backend.take([cell])).allowed for _ in range(4)] == [True] * 3 + [False]


async def test_fractional_interval_is_the_same_everywhere(backend: Clocked) -> None:
    cell = Cell("third", 1 / 3, 2)  # 333333 µs per request
    assert [(await backend.take([cell])).allowed for _ in range(3)] == [True, True, False]
    await backend.advance(333_332)
    assert await backend.take([cell]) == Decision(False, seconds(1), 0)
    await backend.advance(1)
    assert (await backend.take([cell])).allowed


async def test_admit_replay_before_quota(backend: Clocked) -> None:
    quota = Cell("per_client:acme", 60.0, 1)
    assert (await backend.admit("acme", "jti-1", quota)).allowed
    assert await backend.admit("acme", "jti-1", quota) == Decision(False, replayed=True)
    # Over quota: refused with the wait, and jti-2 not recorded.
    assert await backend.admit("acme", "jti-2", quota) == Decision(False, 60.0, 0)
    assert not (await backend.admit("acme", "jti-2", None)).replayed
    # The same jti under another client is another assertion.
    assert (await backend.admit("other", "jti-1", None)).allowed


async def test_replay_refused_spends_no_quota(backend: Clocked) -> None:
    quota = Cell("per_client:acme", 60.0, 2)
    assert (await backend.admit("acme", "a", quota)).allowed
    for _ in range(3):
        assert (await backend.admit("acme", "a", quota)).replayed
    assert (await backend.admit("acme", "b", quota)).allowed  # the second of the burst is still there


async def test_replay_expires_with_its_ttl_on_the_real_clock(redis_module: RedisServer) -> None:
    """Not on the test clock: the replay set's expiry is the backend's own (monotonic / Redis PX)."""
    states = [MemoryState(), RedisState(RedisSettings(url=redis_module.url, prefix="conformance-ttl:"))]
    for state in states:
        assert (await state.admit("acme", "short", 1.0, None)).allowed
        assert (await state.admit("acme", "short", 1.0, None)).replayed
    await asyncio.sleep(1.05)
    for state in states:
        assert (await state.admit("acme", "short", 1.0, None)).allowed, state.name
        await state.close()


# Random sequences: a few cells (intervals >= 1 s so no Redis key expires in real time while the
# test clock stands still), takes of one or two cells, admissions with or without a quota, and
# clock steps; memory and Redis must answer every step alike.
cell_specs = st.tuples(st.integers(1_000_000, 20_000_000), st.integers(1, 4))
operations = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 30_000_000)),
    # The calls the gateway makes: a cell that is not last always comes with the same last cell
    # (per-IP with global), as StateBackend.take asks.
    st.tuples(st.just("take"), st.sampled_from([[0, 3], [1, 2, 3], [3], [2, 3]])),
    st.tuples(st.just("admit"), st.integers(0, 4), st.one_of(st.none(), st.just(4))),
)


async def _run(kind: str, url: str, specs: list[tuple[int, int]], ops: list[tuple]) -> list[Decision | None]:
    cells = [Cell(f"cell{i}", interval / 1_000_000, burst) for i, (interval, burst) in enumerate(specs)]
    clocked = Clocked(kind, url)
    await clocked.set_clock()
    answers: list[Decision | None] = []
    try:
        for op in ops:
            if op[0] == "advance":
                await clocked.advance(op[1])
                answers.append(None)
            elif op[0] == "take":
                answers.append(await clocked.take([cells[i] for i in op[1]]))
            else:
                quota = None if op[2] is None else cells[op[2]]
                answers.append(await clocked.admit("client", f"jti{op[1]}", quota))
    finally:
        await clocked.close()
    return answers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(cell_specs, min_size=5, max_size=5), ops=st.lists(operations, min_size=1, max_size=30))
def test_memory_and_redis_decide_alike(redis_module: RedisServer, specs: list[tuple[int, int]], ops: list[tuple]) -> None:
    memory = asyncio.run(_run("memory", redis_module.url, specs, ops))
    redis = asyncio.run(_run("redis", redis_module.url, specs, ops))
    assert memory == redis


def test_the_scripts_share_one_gcra() -> None:
    """Each script is composed from lua/gcra.lua; none carries its own copy of the algorithm."""
    for name in ("take", "admit", "release"):
        body = lua(name)
        assert "gcra(" in body or name == "release"
        assert "local function gcra" not in body and "interval * burst" not in body


def test_lua_files_ship_in_the_wheel(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True, timeout=120,
    )
    (wheel,) = tmp_path.glob("bearer_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"gateway/state/lua/{name}.lua" for name in ("clock", "gcra", "take", "admit", "release")} <= names
