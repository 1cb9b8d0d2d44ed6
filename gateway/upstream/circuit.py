"""Stage upstream_guard: a circuit breaker in front of the AS, so a failing AS is not hammered by every request."""

from __future__ import annotations

import time

from gateway.metrics import metrics


class CircuitBreaker:
    """Closed → open after `failures` consecutive failures → half-open after `open_for` (one probe).

    A probe that succeeds closes the circuit; one that fails opens it again. Failures are what the
    caller cannot be blamed for: no connection, a timeout, a 5xx or a truncated answer from the AS.
    Whoever was handed the probe (`acquire()` returned 0 while `probing_now()`) must end it with
    `record()` or, when it ends without a verdict (the caller went away), `release()`; otherwise the
    circuit would stay half-open with its only probe slot taken, refusing everything for good.
    """

    def __init__(self, failures: int, open_for: float) -> None:
        self.threshold = failures
        self.open_for = open_for
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False
        self._gauge = metrics().upstream_circuit_open

    def wait(self) -> float:
        """A getter: 0 when a request could go now, else the seconds to wait; takes no probe slot."""
        if self.opened_at is None:
            return 0.0
        remaining = self.opened_at + self.open_for - time.monotonic()
        if remaining > 0:
            return remaining
        return 1.0 if self.probing else 0.0  # one probe at a time while half-open

    def acquire(self) -> float:
        """Ask to send one request: 0 when it may go now (taking the probe slot when half-open),
        else the seconds to wait. Unlike `wait()`, this changes the breaker's state."""
        wait = self.wait()
        if wait == 0.0 and self.opened_at is not None:
            self.probing = True
        return wait

    def probing_now(self) -> bool:
        """True while a half-open probe is out (the request just admitted is that probe)."""
        return self.probing

    def release(self) -> None:
        """The probe ended without telling anything about the AS: free the slot for the next request."""
        self.probing = False

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
