"""Prometheus metrics; names start with bearer_gateway_, labels take only bounded values."""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import __version__

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """All metrics of one process; created once (the registry refuses duplicates)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.tally = Tally()
        self.requests = Counter(
            "bearer_gateway_requests_total",
            "Token requests by outcome, reason code, client (configured ids or 'unknown') and grant kind.",
            ["outcome", "reason", "client", "grant"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "bearer_gateway_request_duration_seconds",
            "Time from request to answer, by outcome.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "bearer_gateway_stage_duration_seconds",
            "Time spent in each check stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "bearer_gateway_upstream_duration_seconds",
            "Time the authorization server took to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_responses = Counter(
            "bearer_gateway_upstream_responses_total",
            "Authorization server answers by HTTP status.",
            ["status"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "bearer_gateway_upstream_errors_total",
            "Requests that got no answer from the authorization server, by reason.",
            ["reason"],
            registry=registry,
        )
        self.in_flight = Gauge("bearer_gateway_in_flight_requests", "Requests being handled now.", registry=registry)
        self.upstream_in_flight = Gauge(
            "bearer_gateway_upstream_in_flight_requests",
            "Requests waiting on the authorization server now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.upstream_circuit_open = Gauge(
            "bearer_gateway_upstream_circuit_open",
            "1 while the circuit breaker to the authorization server is open.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.rate_limit_decisions = Counter(
            "bearer_gateway_rate_limit_decisions_total",
            "Rate-limit decisions by limit and decision (allowed, limited).",
            ["limit", "decision"],
            registry=registry,
        )
        self.replay_hits = Counter(
            "bearer_gateway_replay_hits_total",
            "Assertions refused because their jti was already used.",
            ["client"],
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "bearer_gateway_jwks_fetches_total",
            "Remote JWKS fetches by client and outcome (ok, error).",
            ["client", "outcome"],
            registry=registry,
        )
        self.state_errors = Counter(
            "bearer_gateway_state_errors_total",
            "Shared-state (Redis) errors by operation and the decision taken.",
            ["operation", "decision"],
            registry=registry,
        )
        self.state_duration = Histogram(
            "bearer_gateway_state_duration_seconds",
            "Shared-state round-trip time by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.config_reloads = Counter(
            "bearer_gateway_config_reloads_total",
            "Configuration reloads by outcome (ok, refused).",
            ["outcome"],
            registry=registry,
        )
        self.upstream_credential_rejections = Counter(
            "bearer_gateway_upstream_credential_rejections_total",
            "Authorization server refusals of credentials the gateway injected (a misconfiguration).",
            ["client"],
            registry=registry,
        )
        self.config_last_reload_successful = Gauge(
            "bearer_gateway_config_last_reload_successful",
            "1 if the last configuration load (start or SIGHUP) succeeded, 0 if it was refused.",
            registry=registry,
            multiprocess_mode="min",
        )
        self.config_last_reload_success = Gauge(
            "bearer_gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or SIGHUP).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.certificate_expiry = Gauge(
            "bearer_gateway_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix time) of each certificate the gateway presents: listen, admin, "
            "client_auth:<client id> (tls_client_auth to the AS).",
            ["certificate"],
            registry=registry,
            multiprocess_mode="min",
        )
        self.replay_set_entries = Gauge(
            "bearer_gateway_replay_set_entries",
            "Entries in the in-memory replay set (state.backend memory), read at scrape time.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.replay_set_capacity = Gauge(
            "bearer_gateway_replay_set_capacity",
            "state.max_replay_entries: when the set is full, new assertions are refused with 503.",
            registry=registry,
            multiprocess_mode="max",
        )
        # A gauge rather than an Info metric: Info does not work in multi-process mode.
        self.build = Gauge(
            "bearer_gateway_build_info",
            "Version of the running gateway.",
            ["version"],
            registry=registry,
            multiprocess_mode="all",
        )
        self.build.labels(__version__).set(1)
        # Counters that appear only on their first event would be invisible to increase() then.
        for outcome in ("ok", "refused"):
            self.config_reloads.labels(outcome)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, memoised for the hot path: label values are bounded, and each
        labels() call costs a lock and a key build (the profile showed ~1.5 µs, ten-plus times a request)."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


    def inc(self, child: Any, amount: float = 1.0) -> None:
        """`child.inc(amount)` (a counter or gauge child), applied with the next flush of the tally."""
        self.tally.inc(child, amount)

    def observe(self, child: Any, value: float) -> None:
        """`child.observe(value)` (a histogram child), applied with the next flush of the tally."""
        self.tally.observe(child, value)


class Tally:
    """Hot-path increments and observations added up in plain numbers, without a lock each, and applied
    to the Prometheus values once per turn of the event loop (and before every exposition).

    prometheus_client takes a lock per `inc()` and two plus a bucket walk per `observe()`: ~20 of
    them per token request. Here an increment is a dict update; the flush, scheduled with
    `call_soon` by the first pending increment, applies each child's sum once. Nothing is lost or
    rounded (counts and sums are added exactly), so multi-process export stays exact: a worker's
    numbers reach its files at the end of the loop turn that answered the request."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        # histogram child -> [sum, count per bucket (the child's upper bounds, +Inf last)]
        self.histograms: dict[Any, list[float]] = {}
        self.bounds: dict[Any, list[float]] = {}
        self.scheduled = False

    def _schedule(self) -> None:
        self.scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop (a command, a test): apply at once
            self.flush()

    def inc(self, child: Any, amount: float = 1.0) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0.0) + amount
        if not self.scheduled:
            self._schedule()

    def observe(self, child: Any, value: float) -> None:
        pending = self.histograms.get(child)
        if pending is None:
            bounds = self.bounds.get(child)
            if bounds is None:
                bounds = self.bounds[child] = list(child._upper_bounds)
            pending = self.histograms[child] = [0.0] * (len(bounds) + 1)
        else:
            bounds = self.bounds[child]
        pending[0] += value
        # The first bucket whose upper bound is >= value (as Histogram.observe picks it).
        pending[1 + bisect_left(bounds, value)] += 1
        if not self.scheduled:
            self._schedule()

    def flush(self) -> None:
        self.scheduled = False
        counts, self.counts = self.counts, {}
        histograms, self.histograms = self.histograms, {}
        for child, amount in counts.items():
            if amount:
                child.inc(amount)
        for child, pending in histograms.items():
            # Histogram.observe adds to _sum and one of _buckets; the same values, added in bulk.
            child._sum.inc(pending[0])
            buckets = child._buckets
            for index, count in enumerate(pending[1:]):
                if count:
                    buckets[index].inc(count)


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process-wide metrics object."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def exposition() -> bytes:
    """The /metrics body: this process, or every worker when running several (multi-process mode)."""
    metrics().tally.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(metrics().registry)
