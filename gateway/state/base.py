"""The state interface every backend implements; nothing else in the gateway knows which one runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StateUnavailable(Exception):
    """The backend could not answer in time; the caller applies the configured on_error policy."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One rate-limit cell (GCRA): refilled one request every `interval` seconds, up to `burst` at once."""

    key: str
    interval: float
    burst: int


@dataclass(frozen=True, slots=True)
class Decision:
    """A state answer: allowed, or refused by cell `refused` with the seconds until a retry passes.

    `replayed` is set by `admit` when the jti had been used already.
    """

    allowed: bool
    retry_after: float = 0.0
    refused: int = -1
    replayed: bool = False


ALLOWED = Decision(True)


class StateBackend(Protocol):
    name: str

    async def take(self, cells: Sequence[Cell]) -> Decision:
        """One request on every cell, all or nothing (one round trip): refused cells move none."""
        ...

    async def admit(self, key: str, ttl: float, quota: Cell | None) -> Decision:
        """Stages 13-14 atomically: a used `key` is a replay; else the quota decides; only an
        admitted request records `key` (for `ttl` seconds) and spends quota."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (readiness)."""
        ...

    async def close(self) -> None: ...
