"""The state interface every backend implements; nothing else in the gateway knows which one runs."""

from __future__ import annotations

from typing import Protocol


class StateUnavailable(Exception):
    """The backend could not answer in time; the caller applies the configured on_error policy."""


class StateBackend(Protocol):
    async def claim_once(self, key: str, ttl: float) -> bool:
        """Record `key` for `ttl` seconds if absent (atomically); False when it was already there."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (readiness)."""
        ...

    async def close(self) -> None: ...
