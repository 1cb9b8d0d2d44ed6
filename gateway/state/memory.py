"""In-process state: a bounded, expiring replay set for one worker."""

from __future__ import annotations

import heapq
import time

from gateway.state.base import StateUnavailable


class MemoryState:
    """Replay set in a dict with a min-heap of expiries; expired entries are dropped as time passes."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

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

    def __len__(self) -> int:
        return len(self._expiry)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()
