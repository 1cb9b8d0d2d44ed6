"""The state interface every backend implements; nothing else in the gateway knows which one runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StateUnavailable(Exception):
    """The backend could not answer in time; the caller applies the configured on_error policy.

    A Redis timeout may fire after the admit script ran. The backend then undoes that attempt by
    itself in the background (the jti forgotten, the quota given back, or the attempt made void if
    it runs later), because the request it belonged to was not forwarded. When the caller forwards
    the request all the same (fail_open), it calls `keep()` first: the record stays.
    """

    def keep(self) -> None:
        """The request is forwarded after all: any record this attempt left must stay."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One rate-limit cell (GCRA): refilled one request every `interval` seconds, up to `burst` at once."""

    key: str
    interval: float
    burst: int

    @property
    def interval_us(self) -> int:
        """The interval in whole microseconds: the unit every backend computes in (exact, the same everywhere)."""
        return max(1, round(self.interval * 1_000_000))


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
        """One request on every cell, all or nothing (one round trip): refused cells move none.

        Put the widest cell last: on Redis Cluster the cells of one call live in the slot of the last.
        """
        ...

    async def admit(self, scope: str, jti: str, ttl: float, quota: Cell | None) -> Decision:
        """Replay check and quota atomically: a used (`scope`, `jti`) is a replay; else the quota
        decides; only an admitted request records the jti (for `ttl` seconds) and spends quota.
        `scope` is the client id: its jtis and its quota share one Redis Cluster slot."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (readiness)."""
        ...

    async def close(self) -> None: ...
