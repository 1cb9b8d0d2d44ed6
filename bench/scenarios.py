"""The throughput and latency scenarios: each one the gateway against its reference, alternated A B A B.

Every measured run is a fixed-duration wrk run; the two systems of a pair are both running, but
only one is loaded at a time, and their runs alternate so that a slow minute on this shared
machine hits both alike. A pair's result is the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.assertions import BenchClient, forged_bodies, mint_bodies, unknown_issuer_bodies, write_bodies
from bench.loadgen import WrkResult, run_wrk
from bench.procs import free_port, redis_dbsize, start_redis_cluster, tree_cpu_seconds
from bench.servers import Bench, Server, gateway_config, start_gateway, start_reference


@dataclass
class Settings:
    duration: float = 5.0  # seconds per measured run
    warmup: float = 2.0  # seconds per server before its first measured run
    rounds: int = 3  # A B pairs per scenario
    connections: int = 32  # saturation runs
    paced_connections: int = 16  # latency runs
    latency_load: float = 0.5  # share of the measured saturation rate for scenario 6


@dataclass
class Scenario:
    id: str
    title: str
    a: str  # what is measured
    b: str  # what it is held against
    metric: str  # "throughput ratio" or "p99 added"
    target: str  # e.g. ">= 0.75", "report"
    status: str = "ok"  # or "not available: <reason>"
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    short: str = ""  # plot label
    c: str = ""  # the raw floor (asyncio Protocol + httptools reference) when the scenario has one

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Bodies:
    """Request bodies for one system: a fixed file cycled, or fresh unique assertions minted per run."""

    def __init__(
        self, bench: Bench, name: str, *, cycle: list[str] | None = None, client: BenchClient | None = None
    ) -> None:
        self.bench = bench
        self.name = name
        self.client = client
        self.runs = 0
        self.rate = 2000.0  # first guess of the saturation rate; corrected from each run
        self.cycle_file = write_bodies(bench.workdir / f"{name}.cycle.txt", cycle) if cycle is not None else None

    @property
    def once(self) -> bool:
        return self.cycle_file is None

    def for_run(self, duration: float, rate: float | None = None) -> Path:
        if self.cycle_file is not None:
            return self.cycle_file
        assert self.client is not None
        # Enough unique assertions for the expected rate and then some; minted while nothing is loaded.
        count = int((rate or self.rate * 1.6) * duration) + 500
        self.runs += 1
        path = self.bench.workdir / f"{self.name}.run{self.runs}.txt"
        return write_bodies(path, mint_bodies(self.client, count))

    def observe(self, result: WrkResult) -> None:
        if self.once:
            self.rate = max(result.rps, 1.0) * (2.0 if result.exhausted else 1.0)


@dataclass
class Side:
    server: Server
    bodies: Bodies
    expected: int


def _run(
    bench: Bench, side: Side, settings: Settings, duration: float, *, rate: float | None = None, cpus: str | None
) -> WrkResult:
    path = side.bodies.for_run(duration, rate)
    cpu_before = tree_cpu_seconds(side.server.proc.pid)
    result = run_wrk(
        side.server.url,
        path,
        duration=duration,
        connections=settings.paced_connections if rate else settings.connections,
        expected_status=side.expected,
        once=side.bodies.once,
        workdir=bench.workdir,
        rate=rate,
        cpus=cpus,
    )
    # CPU seconds the server (and its workers) used per answered request: less noisy than req/s on a shared box.
    cpu = tree_cpu_seconds(side.server.proc.pid) - cpu_before
    result.extra["cpu_s"] = round(cpu, 3)
    result.extra["cpu_us_per_request"] = round(1e6 * cpu / result.requests, 1) if result.requests else None
    side.bodies.observe(result)
    return result


def _record(scenario: Scenario, label: str, side: Side, rnd: int, result: WrkResult) -> None:
    row = {"system": label, "server": side.server.name, "round": rnd, **result.as_dict()}
    scenario.runs.append(row)
    if result.expected_share < 0.999:
        scenario.notes.append(
            f"round {rnd} {side.server.name}: only {100 * result.expected_share:.2f}% answers were "
            f"{side.expected} ({result.statuses}); throughput counts expected answers only"
        )
    if result.exhausted:
        scenario.notes.append(f"round {rnd} {side.server.name}: ran out of unique assertions before the end")


def alternate(
    bench: Bench,
    scenario: Scenario,
    a: Side,
    b: Side,
    settings: Settings,
    *,
    load_cpus: str | None,
    rate: float | None = None,
    floor: Side | None = None,
) -> None:
    """Warm all, then A B, B A, ... (with a floor C: A B C, B C A, C A B, ...); fills runs and summary."""
    sides = {"a": a, "b": b} | ({"c": floor} if floor else {})
    for side in sides.values():
        _run(bench, side, settings, settings.warmup, rate=rate, cpus=load_cpus)
    rounds: list[dict[str, WrkResult]] = []
    for rnd in range(settings.rounds):
        # Neither always goes first: two sides swap each round, three rotate.
        keys = list(sides)
        order = (keys if rnd % 2 == 0 else keys[::-1]) if len(keys) == 2 else keys[rnd % 3 :] + keys[: rnd % 3]
        results = {}
        for real in order:
            results[real] = _run(bench, sides[real], settings, settings.duration, rate=rate, cpus=load_cpus)
            _record(scenario, real, sides[real], rnd, results[real])
        rounds.append(results)
    scenario.summary = summarise([(r["a"], r["b"]) for r in rounds], paced=rate is not None)
    if floor is not None:
        against_floor = summarise([(r["a"], r["c"]) for r in rounds], paced=rate is not None)
        scenario.summary |= {
            ("floor_" + k if k.startswith(("ratio", "p99_added", "p50_added")) else k.replace("b_", "c_", 1)): v
            for k, v in against_floor.items()
            if not k.startswith("a_") and k != "offered_rate"
        }


def summarise(pairs: list[tuple[WrkResult, WrkResult]], *, paced: bool) -> dict[str, Any]:
    med = statistics.median
    a_rps = [p[0].expected_rps for p in pairs]
    b_rps = [p[1].expected_rps for p in pairs]
    ratios = [x / y for x, y in zip(a_rps, b_rps, strict=True) if y > 0]
    out: dict[str, Any] = {
        "a_rps": round(med(a_rps), 1),
        "b_rps": round(med(b_rps), 1),
        "ratio": round(med(ratios), 3) if ratios else None,
        "ratios": [round(r, 3) for r in ratios],
        "a_cpu_us": _median_of(p[0].extra.get("cpu_us_per_request") for p in pairs),
        "b_cpu_us": _median_of(p[1].extra.get("cpu_us_per_request") for p in pairs),
        "a_p50_ms": round(med(p[0].latency_ms["p50"] for p in pairs), 3),
        "b_p50_ms": round(med(p[1].latency_ms["p50"] for p in pairs), 3),
        "a_p99_ms": round(med(p[0].latency_ms["p99"] for p in pairs), 3),
        "b_p99_ms": round(med(p[1].latency_ms["p99"] for p in pairs), 3),
    }
    if paced:
        added99 = [p[0].latency_ms["p99"] - p[1].latency_ms["p99"] for p in pairs]
        added50 = [p[0].latency_ms["p50"] - p[1].latency_ms["p50"] for p in pairs]
        out["p99_added_ms"] = round(med(added99), 3)
        out["p50_added_ms"] = round(med(added50), 3)
        out["p99_added_per_round_ms"] = [round(x, 3) for x in added99]
        out["offered_rate"] = pairs[0][0].offered_rate
    return out


def _median_of(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def _target_met(scenario: Scenario) -> None:
    target = scenario.target
    if scenario.status != "ok" or not target.startswith(("≥", "≤")):
        return
    bound = float(target[1:].split()[0])
    if target.startswith("≥"):
        value = scenario.summary.get("ratio")
        scenario.met = value is not None and value >= bound
    else:
        value = scenario.summary.get("p99_added_ms")
        scenario.met = value is not None and value <= bound


SHORT = {
    "1": "reject\nunknown iss",
    "2": "forged\nsignature",
    "3a": "accept\nRS256",
    "3b": "accept\nES256",
    "4": "Redis vs\nmemory",
    "4c": "Redis Cluster\nvs single",
    "5": "2 workers\nvs 1",
    "6": "paced at 50%\n(accept RS256)",
}


class Runner:
    """Runs the scenarios in order; each starts and stops its own servers."""

    def __init__(self, bench: Bench, settings: Settings, log: Callable[[str], None]) -> None:
        self.bench = bench
        self.settings = settings
        self.log = log
        self.scenarios: list[Scenario] = []
        self.rs = bench.clients["rs"]
        self.es = bench.clients["es"]
        self._servers: list[Server] = []

    # -- helpers -------------------------------------------------------------------------------

    def _gateway(self, name: str, *, backend: str = "memory", workers: int = 1, cpus: str | None) -> Server | str:
        if backend == "redis" and self.bench.redis_port is None:
            return f"no Redis: {self.bench.redis_missing}"
        config = gateway_config(self.bench, port=free_port(), admin_port=free_port(), backend=backend, workers=workers)
        server = start_gateway(self.bench, name, config, cpus=cpus)
        if isinstance(server, Server):
            self._servers.append(server)
        return server

    def _required_gateway(self, name: str, **options: Any) -> Server:
        """A gateway this scenario cannot do without: a refusal fails the scenario."""
        server = self._gateway(name, **options)
        if isinstance(server, str):
            raise RuntimeError(server)
        return server

    def _alternate(self, sc: Scenario, a: Side, b: Side, floor: Side | None = None) -> None:
        alternate(self.bench, sc, a, b, self.settings, load_cpus=self.bench.load_cpus, floor=floor)
        if floor is not None:
            sc.c = floor.server.name

    def _reference(self, kind: str, key: BenchClient | None = None) -> Server:
        server = start_reference(self.bench, kind, key=key, cpus=self.bench.server_cpus)
        self._servers.append(server)
        return server

    def _stop_all(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()

    def _scenario(self, scenario: Scenario, body: Callable[[Scenario], None]) -> Scenario:
        scenario.short = SHORT.get(scenario.id, "")
        self.log(f"scenario {scenario.id}: {scenario.title}")
        started = time.monotonic()
        try:
            body(scenario)
        except Exception as exc:  # one broken scenario must not lose the others
            scenario.status = f"failed: {exc}".splitlines()[0][:300]
            self.log(f"  {scenario.status}")
        finally:
            self._stop_all()
        _target_met(scenario)
        scenario.summary["seconds"] = round(time.monotonic() - started, 1)
        self.scenarios.append(scenario)
        s = scenario.summary
        if scenario.status == "ok":
            self.log(
                f"  A {s.get('a_rps')} req/s p99 {s.get('a_p99_ms')} ms {s.get('a_cpu_us')} us/req | "
                f"B {s.get('b_rps')} req/s p99 {s.get('b_p99_ms')} ms {s.get('b_cpu_us')} us/req | "
                f"ratio {s.get('ratio')} (rounds {s.get('ratios')})"
                + (f" | p99 added {s.get('p99_added_ms')} ms" if "p99_added_ms" in s else "")
            )
        else:
            self.log(f"  {scenario.status}")
        return scenario

    def _redis_problem(self, server: Server) -> str | None:
        """None when the gateway really keeps its replay set in Redis (a config that only parses is not enough)."""
        assert self.bench.redis_port is not None
        if redis_dbsize(self.bench.redis_port) == 0:
            return (
                "state.backend: redis was accepted but no key reached Redis after accepted requests "
                "(the Redis backend is not built yet)"
            )
        return None

    # -- the scenarios ---------------------------------------------------------------------------

    def cheap_reject(self) -> Scenario:
        def body(sc: Scenario) -> None:
            unknown = unknown_issuer_bodies(2000)
            gw = self._required_gateway("gw-reject", cpus=self.bench.server_cpus)
            ref = self._reference("reject")
            raw = self._reference("raw-reject")
            self._alternate(
                sc,
                Side(gw, Bodies(self.bench, "unknown-iss", cycle=unknown), 401),
                Side(ref, Bodies(self.bench, "unknown-iss-ref", cycle=unknown), 400),
                Side(raw, Bodies(self.bench, "unknown-iss-raw", cycle=unknown), 400),
            )

        return self._scenario(
            Scenario(
                "1",
                "cheap reject: unknown iss",
                "gateway (401 invalid_client)",
                "ref-reject (400)",
                "throughput ratio",
                "≥ 0.75",
            ),
            body,
        )

    def forged(self) -> Scenario:
        def body(sc: Scenario) -> None:
            forged = forged_bodies(self.rs, 2000)
            gw = self._required_gateway("gw-forged", cpus=self.bench.server_cpus)
            ref = self._reference("verify-proxy", self.rs)
            raw = self._reference("raw-verify-proxy", self.rs)
            self._alternate(
                sc,
                Side(gw, Bodies(self.bench, "forged", cycle=forged), 401),
                Side(ref, Bodies(self.bench, "forged-ref", cycle=forged), 401),
                Side(raw, Bodies(self.bench, "forged-raw", cycle=forged), 401),
            )

        return self._scenario(
            Scenario(
                "2",
                "forged RS256 signature, known client",
                "gateway (401)",
                "ref-verify-proxy, bad signature (no upstream call)",
                "throughput ratio",
                "report",
            ),
            body,
        )

    def accept(self, client: BenchClient) -> Scenario:
        def body(sc: Scenario) -> None:
            gw = self._required_gateway(f"gw-accept-{client.alg.lower()}", cpus=self.bench.server_cpus)
            ref = self._reference("verify-proxy", client)
            mine = Bodies(self.bench, f"valid-{client.alg.lower()}", client=client)
            # The reference keeps no replay set: it cycles a fixed set of valid assertions.
            fixed = mint_bodies(client, 3000)
            theirs = Bodies(self.bench, f"valid-{client.alg.lower()}-ref", cycle=fixed)
            raw = self._reference("raw-verify-proxy", client)
            floor = Bodies(self.bench, f"valid-{client.alg.lower()}-raw", cycle=fixed)
            self._alternate(sc, Side(gw, mine, 200), Side(ref, theirs, 200), Side(raw, floor, 200))

        number = "3a" if client.alg == "RS256" else "3b"
        return self._scenario(
            Scenario(
                number,
                f"accept path, {client.alg}, memory state",
                "gateway (200 via static AS)",
                f"ref-verify-proxy {client.alg}",
                "throughput ratio",
                "≥ 1.0",
            ),
            body,
        )

    def redis_vs_memory(self) -> Scenario:
        def body(sc: Scenario) -> None:
            if self.bench.redis_port is None:
                sc.status = f"not available: no Redis ({self.bench.redis_missing})"
                return
            redis_gw = self._gateway("gw-redis", backend="redis", cpus=self.bench.server_cpus)
            if isinstance(redis_gw, str):
                sc.status = f"not available: {redis_gw}"
                return
            mem_gw = self._required_gateway("gw-memory", cpus=self.bench.server_cpus)
            redis_side = Side(redis_gw, Bodies(self.bench, "valid-redis", client=self.rs), 200)
            _run(self.bench, redis_side, self.settings, 1.0, cpus=self.bench.load_cpus)
            problem = self._redis_problem(redis_gw)
            if problem:
                sc.status = f"not available: {problem}"
                return
            self._alternate(sc, redis_side, Side(mem_gw, Bodies(self.bench, "valid-mem", client=self.rs), 200))

        return self._scenario(
            Scenario(
                "4",
                "accept path, RS256: Redis state vs memory state",
                "gateway, state.backend redis",
                "gateway, state.backend memory",
                "throughput ratio",
                "≥ 0.85",
            ),
            body,
        )

    def cluster_vs_single(self) -> Scenario:
        def body(sc: Scenario) -> None:
            if self.bench.redis_port is None:
                sc.status = f"not available: no Redis ({self.bench.redis_missing})"
                return
            cluster = start_redis_cluster(self.bench.workdir, self.bench.load_cpus)
            if isinstance(cluster, str):
                sc.status = f"not available: {cluster}"
                return
            procs, self.bench.redis_cluster_ports = cluster
            try:
                cluster_gw = self._required_gateway("gw-redis-cluster", backend="redis-cluster",
                                                    cpus=self.bench.server_cpus)
                single_gw = self._required_gateway("gw-redis", backend="redis", cpus=self.bench.server_cpus)
                cluster_side = Side(cluster_gw, Bodies(self.bench, "valid-cluster", client=self.rs), 200)
                _run(self.bench, cluster_side, self.settings, 1.0, cpus=self.bench.load_cpus)
                keys = sum(redis_dbsize(port) for port in self.bench.redis_cluster_ports)
                if keys == 0:
                    sc.status = "not available: no key reached the Redis Cluster"
                    return
                sc.notes.append("Redis Cluster: 3 primaries, no replicas, on the load CPU like the single Redis")
                single_side = Side(single_gw, Bodies(self.bench, "valid-single", client=self.rs), 200)
                self._alternate(sc, cluster_side, single_side)
            finally:
                self._stop_all()
                for proc in procs:
                    proc.stop()
                self.bench.redis_cluster_ports = []

        return self._scenario(
            Scenario(
                "4c",
                "accept path, RS256: Redis Cluster vs single Redis",
                "gateway, state.redis.mode cluster",
                "gateway, state.redis.mode single",
                "throughput ratio",
                "report",
            ),
            body,
        )

    def workers(self) -> Scenario:
        def body(sc: Scenario) -> None:
            if self.bench.redis_port is None:
                sc.status = f"not available: workers > 1 need Redis state ({self.bench.redis_missing})"
                return
            # Unpinned: two workers need both cores; the single worker gets the same freedom.
            two = self._gateway("gw-2-workers", backend="redis", workers=2, cpus=None)
            if isinstance(two, str):
                sc.status = f"not available: {two}"
                return
            one = self._gateway("gw-1-worker", backend="redis", workers=1, cpus=None)
            if isinstance(one, str):
                sc.status = f"not available: {one}"
                return
            two_side = Side(two, Bodies(self.bench, "valid-2w", client=self.rs), 200)
            _run(self.bench, two_side, self.settings, 1.0, cpus=None)
            problem = self._redis_problem(two)
            if problem:
                sc.status = f"not available: {problem}"
                return
            alternate(
                self.bench,
                sc,
                two_side,
                Side(one, Bodies(self.bench, "valid-1w", client=self.rs), 200),
                self.settings,
                load_cpus=None,
            )
            sc.notes.append("all processes unpinned here (wrk, nginx, Redis and the workers share both cores)")

        return self._scenario(
            Scenario(
                "5",
                "accept path, RS256, Redis state: 2 workers vs 1",
                "gateway, workers: 2",
                "gateway, workers: 1",
                "throughput ratio",
                "report",
            ),
            body,
        )

    def latency(self, saturation: float | None) -> Scenario:
        def body(sc: Scenario) -> None:
            rate = saturation
            gw = self._required_gateway("gw-latency", cpus=self.bench.server_cpus)
            mine = Bodies(self.bench, "valid-latency", client=self.rs)
            if not rate:
                rate = _run(
                    self.bench, Side(gw, mine, 200), self.settings, self.settings.duration, cpus=self.bench.load_cpus
                ).expected_rps
            rate = round(rate * self.settings.latency_load)
            ref = self._reference("verify-proxy", self.rs)
            raw = self._reference("raw-verify-proxy", self.rs)
            fixed = mint_bodies(self.rs, 3000)
            theirs = Bodies(self.bench, "valid-latency-ref", cycle=fixed)
            floor = Bodies(self.bench, "valid-latency-raw", cycle=fixed)
            alternate(
                self.bench,
                sc,
                Side(gw, mine, 200),
                Side(ref, theirs, 200),
                self.settings,
                load_cpus=self.bench.load_cpus,
                rate=rate,
                floor=Side(raw, floor, 200),
            )
            sc.c = raw.name
            sc.notes.append(
                f"both paced at {rate} req/s = {self.settings.latency_load:.0%} of the gateway's "
                f"measured RS256 accept saturation rate (scenario 3a); Poisson arrivals, "
                f"{self.settings.paced_connections} connections"
            )

        return self._scenario(
            Scenario(
                "6",
                "latency at 50% of saturation, accept path RS256",
                "gateway",
                "ref-verify-proxy RS256",
                "p99 added",
                "≤ 2 ms",
            ),
            body,
        )

    def run_all(self, only: set[str] | None = None) -> list[Scenario]:
        def want(key: str) -> bool:
            return only is None or key in only

        if want("1"):
            self.cheap_reject()
        if want("2"):
            self.forged()
        saturation = None
        if want("3"):
            saturation = self.accept(self.rs).summary.get("a_rps")
            self.accept(self.es)
        if want("4"):
            self.redis_vs_memory()
        if want("4c"):
            self.cluster_vs_single()
        if want("5"):
            self.workers()
        if want("6"):
            self.latency(saturation)
        return self.scenarios
