"""In-process state for one worker: a bounded, expiring replay set and GCRA rate-limit cells.

Clock: the process' monotonic clock (`time.monotonic_ns`), never the wall clock, so a stepped or
slewed system time neither frees a jti early nor refills a cell. It is per process: each worker
and each replica counts alone, which is why more than one worker needs Redis (whose clock every
gateway shares).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.state.base import ALLOWED, Cell, Decision, StateUnavailable


def gcra(tat: int | None, now: int, interval: int, burst: int) -> tuple[int | None, int]:
    """GCRA in integer microseconds, the twin of gateway/state/lua/gcra.lua (held equal by the
    conformance tests): the cell's new theoretical arrival time, or None and the microseconds until
    a retry passes. A refused request does not move the cell."""
    if tat is None or tat < now:
        tat = now
    new_tat = tat + interval
    allow_at = new_tat - interval * burst
    if allow_at > now:
        return None, allow_at - now
    return new_tat, 0


class MemoryState:
    """Replay set in a dict with a min-heap of expiries; rate cells in an LRU of bounded size."""

    name = "memory"

    def __init__(
        self,
        max_entries: int = 1_000_000,
        max_rate_cells: int = 100_000,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.max_entries = max_entries
        self.max_rate_cells = max_rate_cells
        self._clock = clock  # nanoseconds
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._cells: OrderedDict[str, int] = OrderedDict()

    def _now(self) -> int:
        return self._clock() // 1000

    def _expire(self, now: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expiry, key = heapq.heappop(heap)
            if self._expiry.get(key) == expiry:
                del self._expiry[key]

    def _record(self, key: str, now: int, ttl: float) -> None:
        if len(self._expiry) >= self.max_entries:
            # Forgetting a live jti would allow a replay; refusing new assertions is the safe side.
            raise StateUnavailable("replay set full")
        expiry = now + max(round(ttl * 1_000_000), 1_000_000)
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))

    async def take(self, cells: Sequence[Cell]) -> Decision:
        return self._take(cells, self._now())

    def _take(self, cells: Sequence[Cell], now: int) -> Decision:
        stored = self._cells
        new_tats = []
        for index, cell in enumerate(cells):
            tat, retry = gcra(stored.get(cell.key), now, cell.interval_us, cell.burst)
            if tat is None:
                return Decision(False, retry / 1_000_000, index)
            new_tats.append(tat)
        for cell, tat in zip(cells, new_tats, strict=True):
            stored[cell.key] = tat
            stored.move_to_end(cell.key)
        while len(stored) > self.max_rate_cells:
            # Evicting the least recently seen cell only forgets a limit (the safe direction for
            # memory); a full replay set, by contrast, must refuse.
            stored.popitem(last=False)
        return ALLOWED

    async def admit(self, scope: str, jti: str, ttl: float, quota: Cell | None) -> Decision:
        now = self._now()
        self._expire(now)
        key = f"{scope}\x00{jti}"
        if key in self._expiry:
            return Decision(False, replayed=True)
        if len(self._expiry) >= self.max_entries:
            raise StateUnavailable("replay set full")  # before any quota is spent
        if quota is not None:
            decision = self._take((quota,), now)
            if not decision.allowed:
                return decision
        self._record(key, now, ttl)
        return ALLOWED

    def __len__(self) -> int:
        return len(self._expiry)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()
        self._cells.clear()
