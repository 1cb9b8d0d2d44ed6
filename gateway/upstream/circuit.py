"""Stage 15: a circuit breaker in front of the AS, so a failing AS is not hammered by every request."""

from __future__ import annotations

import time

from gateway.metrics import metrics


class CircuitBreaker:
    """Closed → open after `failures` consecutive failures → half-open after `open_for` (one probe).

    A probe that succeeds closes the circuit; one that fails opens it again. Failures are what the
    caller cannot be blamed for: no connection, a timeout, a 5xx from the AS.
    """

    def __init__(self, failures: int, open_for: float) -> None:
        self.threshold = failures
        self.open_for = open_for
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False
        self._gauge = metrics().upstream_circuit_open

    def retry_after(self) -> float:
        """0 when a request may go now; otherwise the seconds until the circuit half-opens."""
        if self.opened_at is None:
            return 0.0
        remaining = self.opened_at + self.open_for - time.monotonic()
        if remaining > 0:
            return remaining
        if self.probing:
            return 1.0  # one probe at a time while half-open
        self.probing = True
        return 0.0

    def record(self, ok: bool) -> None:
        if ok:
            self.consecutive = 0
            self.opened_at = None
            self.probing = False
            self._gauge.set(0)
            return
        self.consecutive += 1
        if self.probing or self.consecutive >= self.threshold:
            self.opened_at = time.monotonic()
            self.probing = False
            self._gauge.set(1)
