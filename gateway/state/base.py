"""The state interface every backend implements; nothing else in the gateway knows which one runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StateUnavailable(Exception):
    """The backend could not answer in time; the caller applies the configured on_error policy."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A rate-limit answer: allowed, or refused with the seconds until a request would pass."""

    allowed: bool
    retry_after: float = 0.0


class StateBackend(Protocol):
    name: str

    async def claim_once(self, key: str, ttl: float) -> bool:
        """Record `key` for `ttl` seconds if absent (atomically); False when it was already there."""
        ...

    async def take(self, key: str, interval: float, burst: int) -> Decision:
        """GCRA: one request on `key`, refilled every `interval` seconds, up to `burst` at once."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (readiness)."""
        ...

    async def close(self) -> None: ...
