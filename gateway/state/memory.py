"""In-process state for one worker: a bounded, expiring replay set and GCRA rate-limit cells."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict

from gateway.state.base import Decision, StateUnavailable


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

    async def claim_once(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        self._expire(now)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self.max_entries:
            # Forgetting a live jti would allow a replay; refusing new assertions is the safe side.
            raise StateUnavailable("replay set full")
        expiry = now + max(ttl, 1.0)
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))
        return True

    async def take(self, key: str, interval: float, burst: int) -> Decision:
        now = time.monotonic()
        cells = self._cells
        decision, tat = gcra(cells.get(key, now), now, interval, burst)
        cells[key] = tat
        cells.move_to_end(key)
        if len(cells) > self.max_rate_cells:
            # Evicting the least recently seen cell only forgets a limit (the safe direction for
            # memory); a full replay set, by contrast, must refuse.
            cells.popitem(last=False)
        return decision

    def __len__(self) -> int:
        return len(self._expiry)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()
        self._cells.clear()
