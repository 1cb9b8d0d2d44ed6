"""In-process state for one worker: a bounded, expiring replay set and GCRA rate-limit cells."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Sequence

from gateway.state.base import ALLOWED, Cell, Decision, StateUnavailable


def gcra(tat: float, now: float, interval: float, burst: int) -> tuple[Decision, float]:
    """Generic cell rate algorithm: the decision and the new theoretical arrival time.

    A request is allowed when, after adding it, the cell is no more than `burst` intervals
    ahead of now; refused requests do not move the cell.
    """
    tat = max(tat, now)
    new_tat = tat + interval
    allow_at = new_tat - interval * burst
    if allow_at > now:
        return Decision(False, allow_at - now), tat
    return Decision(True), new_tat


class MemoryState:
    """Replay set in a dict with a min-heap of expiries; rate cells in an LRU of bounded size."""

    name = "memory"

    def __init__(self, max_entries: int = 1_000_000, max_rate_cells: int = 100_000) -> None:
        self.max_entries = max_entries
        self.max_rate_cells = max_rate_cells
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._cells: OrderedDict[str, float] = OrderedDict()

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expiry, key = heapq.heappop(heap)
            if self._expiry.get(key) == expiry:
                del self._expiry[key]

    def _record(self, key: str, now: float, ttl: float) -> None:
        if len(self._expiry) >= self.max_entries:
            # Forgetting a live jti would allow a replay; refusing new assertions is the safe side.
            raise StateUnavailable("replay set full")
        expiry = now + max(ttl, 1.0)
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))

    async def take(self, cells: Sequence[Cell]) -> Decision:
        return self._take(cells, time.monotonic())

    def _take(self, cells: Sequence[Cell], now: float) -> Decision:
        stored = self._cells
        new_tats = []
        for index, cell in enumerate(cells):
            decision, tat = gcra(stored.get(cell.key, now), now, cell.interval, cell.burst)
            if not decision.allowed:
                return Decision(False, decision.retry_after, index)
            new_tats.append(tat)
        for cell, tat in zip(cells, new_tats, strict=True):
            stored[cell.key] = tat
            stored.move_to_end(cell.key)
        while len(stored) > self.max_rate_cells:
            # Evicting the least recently seen cell only forgets a limit (the safe direction for
            # memory); a full replay set, by contrast, must refuse.
            stored.popitem(last=False)
        return ALLOWED

    async def admit(self, key: str, ttl: float, quota: Cell | None) -> Decision:
        now = time.monotonic()
        self._expire(now)
        if key in self._expiry:
            return Decision(False, replayed=True)
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
