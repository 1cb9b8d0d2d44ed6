"""A real Prometheus scrapes a real gateway: counts by outcome/reason, the rules file, the dashboard, alerts firing.

The gateway runs as `python -m gateway.cli run` in its own process, so its counters start at zero
whatever other tests did in this one. The rules evaluated are deploy/prometheus/rules.yml with the
group interval shortened to 1s (and, for the alert test, `for` dropped) — the production file
itself is checked with promtool.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics
from tests.integration.test_pipeline import ES, OTHER, RS, clients, form, signed
from tests.support.gateway import JWT_BEARER, TOKEN_PATH, base_config
from tests.support.keys import client_entry
from tests.support.prometheus import JOB, PrometheusServer, binary, fast_rules, free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE_PROMETHEUS_CONFIG = ROOT / "deploy" / "compose" / "prometheus.yml"
DASHBOARD = ROOT / "dashboards" / "bearer-gateway.json"

# A name in an expression: not part of a recording-rule name (those contain ':').
METRIC_NAME = re.compile(r"(?<![\w:])bearer_gateway_[a-z_]+(?![\w:])")
SELECTOR = re.compile(r"(?<![\w:])(bearer_gateway_[a-z_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROMETHEUS_LABELS = {"job", "instance"}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


# --- a gateway in its own process -----------------------------------------------------------------


class GatewayProcess:
    """`python -m gateway.cli run -c FILE` on free loopback ports; counters start at zero."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.config = {
            **config,
            "listen": {"host": "127.0.0.1", "port": self.port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
        }
        self.path = directory / "gateway.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.stdout = directory / "gateway.stdout"
        self.stderr = directory / "gateway.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    async def start(self, timeout: float = 20) -> GatewayProcess:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.path)],
                stdout=out, stderr=err, env=os.environ.copy(), cwd=ROOT,
            )
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}: {self.stderr.read_text()}")
            try:
                async with self.session.get(f"http://{self.admin}/healthz") as response:
                    if response.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway did not start: {self.stderr.read_text()}")

    async def post(self, data: dict[str, str]) -> int:
        assert self.session is not None
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with self.session.post(f"http://127.0.0.1:{self.port}{TOKEN_PATH}", data=data, headers=headers) as r:
            await r.read()
            return r.status

    async def token(self, assertion: str) -> int:
        return await self.post({"grant_type": JWT_BEARER, "assertion": assertion})

    async def metrics_text(self) -> str:
        assert self.session is not None
        async with self.session.get(f"http://{self.admin}/metrics") as response:
            assert response.status == 200
            return await response.text()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self) -> int | None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                self.process.kill()
        return self.process.wait(timeout=10)


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    async def start(config: dict[str, Any]) -> GatewayProcess:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        running = GatewayProcess(config, directory)
        started.append(running)
        return await running.start()

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
def prometheus(tmp_path: Path):
    """Start a real Prometheus scraping the given admin addresses every second; stopped at the end."""
    started: list[PrometheusServer] = []

    def start(targets: list[str], drop_for: bool = False) -> PrometheusServer:
        rules = fast_rules(RULES, tmp_path / f"rules-{len(started)}.yml", interval="1s", drop_for=drop_for)
        server = PrometheusServer(targets, [rules], scrape_interval="1s")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def scraped(prom: PrometheusServer, target: str, after: float) -> bool:
    """True once Prometheus has scraped `target` successfully after the wall-clock time `after`."""
    for item in await prom.targets_up():
        if item["labels"].get("instance") == target and item["health"] == "up":
            last = item.get("lastScrape", "")
            # RFC 3339 with nanoseconds; compare as seconds since the epoch.
            stamp = re.sub(r"(\.\d{6})\d*", r"\1", last).replace("Z", "+00:00")
            try:
                return datetime.fromisoformat(stamp).timestamp() > after
            except ValueError:
                return False
    return False


async def wait_scraped(prom: PrometheusServer, gw: GatewayProcess) -> None:
    """Wait for a scrape that started after now, and one rule evaluation after it."""
    now = time.time()
    await prom.wait_for(f"a scrape of {gw.admin}", lambda: scraped(prom, gw.admin, now + 0.05))
    await asyncio.sleep(1.2)


# --- counts by outcome and reason, recording rules ------------------------------------------------


async def test_prometheus_counts_requests_and_evaluates_every_rule(upstream, gateway_process, prometheus):
    gw = await gateway_process(base_config(upstream.token_url, clients=clients()))
    prom = prometheus([gw.admin])

    # Two rounds with a scrape between them, so every counter has grown between two samples
    # (a series first seen at its final value would have no rate).
    for _ in range(2):
        assert await gw.token(ES.assertion()) == 200
        assert await gw.token(signed(OTHER, iss=ES.client_id)) == 401  # forged: signature_invalid
        assert await gw.post(form("abc.def")) == 400  # jwt_malformed
        await wait_scraped(prom, gw)
    assert await gw.token(ES.assertion()) == 200
    assert await gw.token(signed(OTHER, iss="nobody")) == 401  # iss_unknown
    assert len(upstream.seen) == 3

    expected = {
        ("accepted", "ok", ES.client_id): 3.0,
        ("rejected", "signature_invalid", "unknown"): 2.0,
        ("rejected", "jwt_malformed", "unknown"): 2.0,
        ("rejected", "iss_unknown", "unknown"): 1.0,
    }

    async def counts() -> dict[tuple[str, ...], float] | None:
        got = await prom.values(
            f'sum by (outcome, reason, client) (bearer_gateway_requests_total{{job="{JOB}"}})',
            ("outcome", "reason", "client"),
        )
        return got if got == expected else None

    try:
        await prom.wait_for("bearer_gateway_requests_total by outcome/reason/client", counts)
    except AssertionError:
        raise AssertionError(f"expected {expected}; gateway exposes:\n{await gw.metrics_text()}") from None
    by_outcome = await prom.values(f'sum by (outcome) (bearer_gateway_requests_total{{job="{JOB}"}})', ("outcome",))
    assert by_outcome == {("accepted",): 3.0, ("rejected",): 5.0}
    grants = await prom.values(f'sum by (grant) (bearer_gateway_requests_total{{job="{JOB}"}})', ("grant",))
    assert grants == {("jwt-bearer",): 8.0}
    answers = await prom.values(f'bearer_gateway_upstream_responses_total{{job="{JOB}"}}', ("status",))
    assert answers == {("200",): 3.0}

    # Every rule of the rules file has been evaluated, and none failed.
    async def all_evaluated() -> list[dict[str, Any]] | None:
        groups = await prom.rule_groups()
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(not rule.get("lastEvaluation", "").startswith("0001-") for rule in rules)
        return rules if rules and done else None

    rules = await prom.wait_for("every rule evaluated once", all_evaluated)
    production = yaml.safe_load(RULES.read_text())
    names = {rule.get("record") or rule.get("alert") for group in production["groups"] for rule in group["rules"]}
    assert {rule["name"] for rule in rules} == names
    unhealthy = {rule["name"]: (rule["health"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"}
    assert not unhealthy

    # The recording rules compute what they say, from the traffic above.
    async def recorded() -> dict[str, Any] | None:
        accepted = await prom.values('job_outcome:bearer_gateway_requests:rate5m{outcome="accepted"}', ("job",))
        reasons = await prom.values("job_reason:bearer_gateway_rejections:rate5m", ("reason",))
        ratio = await prom.values("job:bearer_gateway_rejection_ratio:rate5m", ("job",))
        p99 = await prom.values("job_outcome:bearer_gateway_request_duration_seconds:p99_5m", ("outcome",))
        stages = await prom.values("job_stage:bearer_gateway_stage_duration_seconds:p99_5m", ("stage",))
        upstream_p99 = await prom.values("job:bearer_gateway_upstream_duration_seconds:p99_5m", ("job",))
        found = {"accepted": accepted, "reasons": reasons, "ratio": ratio, "p99": p99, "stages": stages,
                 "upstream_p99": upstream_p99}
        return found if all(found.values()) else None

    found = await prom.wait_for("recording rules with values", recorded)
    assert found["accepted"][(JOB,)] > 0
    assert {("signature_invalid",), ("jwt_malformed",)} <= set(found["reasons"])
    assert all(rate > 0 for reason, rate in found["reasons"].items() if reason != ("iss_unknown",))
    assert 0 < found["ratio"][(JOB,)] < 1
    assert {("accepted",), ("rejected",)} <= set(found["p99"])
    assert 0 < found["p99"][("accepted",)] < 5
    assert {("signature",), ("claims",), ("assertion_shape",)} <= set(found["stages"])
    assert 0 < found["upstream_p99"][(JOB,)] < 5

    # Nothing alarming happened, so no alert is firing (the `for` clauses are kept here).
    firing = [a["labels"]["alertname"] for a in await prom.alerts() if a["state"] == "firing"]
    assert firing == []


# --- alerts fire for real -------------------------------------------------------------------------


async def test_alerts_fire_on_misconfiguration_refused_reload_and_down(
    upstream, gateway_process, prometheus, monkeypatch
):
    monkeypatch.setenv("BG_PROM_TEST_AS_SECRET", "throwaway-test-secret")
    injecting = client_entry(RS, upstream={"client_auth": {"method": "client_secret_basic", "client_id": "as-rs",
                                                            "secret": "${BG_PROM_TEST_AS_SECRET}"}})
    config = base_config(upstream.token_url, clients=[client_entry(ES), injecting])
    gw = await gateway_process(config)
    prom = prometheus([gw.admin], drop_for=True)

    async def alerts(name: str) -> list[dict[str, Any]]:
        return [a for a in await prom.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]

    # Healthy: the AS accepts the injected credentials; no misconfiguration alert.
    assert await gw.token(RS.assertion()) == 200
    assert upstream.seen[-1].headers["Authorization"].startswith("Basic ")
    await wait_scraped(prom, gw)
    await wait_scraped(prom, gw)
    assert await alerts("BearerGatewayUpstreamCredentialsRejected") == []
    assert await alerts("BearerGatewayConfigReloadRefused") == []
    assert await alerts("BearerGatewayDown") == []

    # The AS now refuses the gateway's credentials for this client: one request is enough.
    upstream.answer_json(401, {"error": "invalid_client"})
    assert await gw.token(RS.assertion()) == 502
    fired = await prom.wait_for("BearerGatewayUpstreamCredentialsRejected firing",
                                lambda: alerts("BearerGatewayUpstreamCredentialsRejected"))
    assert [a["labels"]["client"] for a in fired] == [RS.client_id]
    assert fired[0]["labels"]["severity"] == "critical"
    assert RS.client_id in fired[0]["annotations"]["summary"]
    assert "client_auth" in fired[0]["annotations"]["description"]

    # A refused reload: the running configuration stays, and the alert says the file is bad.
    gw.path.write_text(yaml.safe_dump({**gw.config, "limits": {"read_timeout": "forever"}}))
    gw.signal(signal.SIGHUP)
    fired = await prom.wait_for("BearerGatewayConfigReloadRefused firing",
                                lambda: alerts("BearerGatewayConfigReloadRefused"))
    assert fired[0]["labels"]["instance"] == gw.admin
    assert fired[0]["labels"]["severity"] == "warning"
    assert "check-config" in fired[0]["annotations"]["description"]
    upstream.answer_json(200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60})
    assert await gw.token(ES.assertion()) == 200  # still serving the previous configuration

    # The gateway stops: up == 0.
    assert await gw.stop() == 0
    fired = await prom.wait_for("BearerGatewayDown firing", lambda: alerts("BearerGatewayDown"))
    assert fired[0]["labels"]["instance"] == gw.admin
    assert fired[0]["labels"]["severity"] == "critical"


# --- the files themselves -------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_rules_and_configs(tmp_path: Path):
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    checked = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout
    # The compose file's Prometheus config expects the rules file beside it (mounted there).
    (tmp_path / "prometheus.yml").write_text(COMPOSE_PROMETHEUS_CONFIG.read_text())
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout
    # Both scrape the job the alerts select.
    for path in (PROMETHEUS_CONFIG, COMPOSE_PROMETHEUS_CONFIG):
        jobs = [job["job_name"] for job in yaml.safe_load(path.read_text())["scrape_configs"]]
        assert JOB in jobs, path
    targets = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:9100"]


def test_promtool_rule_unit_tests_pass():
    """deploy/prometheus/rules_test.yml: alert semantics on synthetic series (for clauses, first increments)."""
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_summary_and_description():
    document = yaml.safe_load(RULES.read_text())
    alerts = [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 15
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert len(rule["annotations"]["summary"]) > 20, rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    wanted = {
        "BearerGatewayDown", "BearerGatewayHighRejectionRatio", "BearerGatewaySignatureFailureSpike",
        "BearerGatewayUnknownIssuerSpike", "BearerGatewayUpstreamCredentialsRejected",
        "BearerGatewayUpstreamCircuitOpen", "BearerGatewayUpstreamErrors", "BearerGatewayStateFailClosed",
        "BearerGatewayStateFailOpen", "BearerGatewayJWKSFetchFailing", "BearerGatewayLatencyHigh",
        "BearerGatewayConfigReloadRefused",
    }
    assert wanted <= set(names)


# --- every metric and label referenced exists -----------------------------------------------------


def metric_catalogue() -> dict[str, tuple[str, set[str]]]:
    """{series name: (base metric, label names)} for every series gateway/metrics.py can expose."""
    metrics = Metrics(CollectorRegistry())
    catalogue: dict[str, tuple[str, set[str]]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        # prometheus_client keeps these privately; a counter's _name has no _total.
        name, kind, labels = collector._name, collector._type, set(collector._labelnames)
        for suffix in SUFFIXES[kind]:
            catalogue[name + suffix] = (name, labels | ({"le"} if suffix == "_bucket" else set()))
    return catalogue


def exposed_series(text: str) -> set[str]:
    """Series names a /metrics body can carry, from its # TYPE lines."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            # Newer prometheus_client versions name a counter's family with its _total already.
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def rule_expressions() -> list[tuple[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [(rule.get("record") or rule["alert"], rule["expr"]) for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = [(f"panel {panel.get('title')}", target["expr"])
           for panel in dashboard["panels"] for target in panel.get("targets", []) if target.get("expr")]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query["query"] if isinstance(query, dict) else query
            out.append((f"variable {variable['name']}", text))
    return out


def check_labels(where: str, expr: str, catalogue: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Problems with label names: selector matchers and by/without clauses must name real labels."""
    problems = []
    used = METRIC_NAME.findall(expr)
    allowed = set(PROMETHEUS_LABELS)
    for name in used:
        if name in catalogue:
            allowed |= catalogue[name][1]
    for name, matchers in SELECTOR.findall(expr):
        if name not in catalogue:
            continue
        for label in MATCHER_LABEL.findall(matchers):
            if label not in catalogue[name][1] | PROMETHEUS_LABELS:
                problems.append(f"{where}: {name} has no label {label!r}")
    for clause in GROUPING.findall(expr):
        for label in (part.strip() for part in clause.split(",")):
            if label and label not in allowed:
                problems.append(f"{where}: grouping by {label!r}, which none of {used} has")
    for name, label in re.findall(r"label_values\(\s*(bearer_gateway_[a-z_]+)[^,]*,\s*(\w+)\s*\)", expr):
        if label not in catalogue.get(name, ("", set()))[1] | PROMETHEUS_LABELS:
            problems.append(f"{where}: label_values of {name} by missing label {label!r}")
    return problems


def test_rules_and_dashboard_use_only_real_metrics_and_labels():
    catalogue = metric_catalogue()
    assert "bearer_gateway_requests_total" in catalogue
    assert catalogue["bearer_gateway_requests_total"][1] == {"outcome", "reason", "client", "grant"}
    expressions = rule_expressions() + dashboard_expressions()
    problems = []
    for where, expr in expressions:
        for name in METRIC_NAME.findall(expr):
            if name not in catalogue:
                problems.append(f"{where}: {name} is not a metric of gateway/metrics.py")
        problems += check_labels(where, expr, catalogue)
    assert problems == []
    # The checker itself catches a wrong label and a wrong name.
    assert check_labels("probe", 'sum by (clientid) (rate(bearer_gateway_requests_total{outcom="x"}[5m]))', catalogue)
    assert "bearer_gateway_requests" not in catalogue  # counters are only ever seen with _total


async def test_referenced_metrics_are_in_the_live_exposition(upstream, gateway_process):
    gw = await gateway_process(base_config(upstream.token_url, clients=clients()))
    assert await gw.token(ES.assertion()) == 200
    assert await gw.token(signed(OTHER, iss=ES.client_id)) == 401
    assert await gw.post(form("abc.def")) == 400
    exposed = exposed_series(await gw.metrics_text())
    referenced = {name for _, expr in rule_expressions() + dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert len(referenced) >= 12
    assert referenced - exposed == set()
    # Every metric the gateway defines is used by the dashboard or the rules (nothing forgotten).
    defined = {name for name, (base, _) in metric_catalogue().items() if base.startswith("bearer_gateway_")}
    bases = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in referenced}
    missing = {name for name in defined if name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
               not in bases}
    assert missing == set()


async def test_every_dashboard_query_runs_in_prometheus(upstream, gateway_process, prometheus):
    gw = await gateway_process(base_config(upstream.token_url, clients=clients()))
    prom = prometheus([gw.admin])
    for _ in range(2):
        assert await gw.token(ES.assertion()) == 200
        assert await gw.token(signed(OTHER, iss=ES.client_id)) == 401
        await wait_scraped(prom, gw)
    substitutions = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s", "${job:regex}": ".+",
                     "$job": ".+", "$instance": ".+"}
    empty = []
    for where, expr in dashboard_expressions():
        if where.startswith("variable"):
            # label_values(selector, label): the selector must find series carrying that label.
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", expr.strip())
            assert match, f"{where}: {expr}"
            selector = match.group(1).replace("$job", ".+")
            values = await prom.values(f"count by ({match.group(2)}) ({selector})", (match.group(2),))
            expected = JOB if match.group(2) == "job" else gw.admin
            assert (expected,) in values, f"{where} offers {sorted(values)}"
            continue
        query = expr
        for variable, value in substitutions.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"{where}: unsubstituted variable in {query}"
        result = await prom.query(query)  # raises with Prometheus' parse error
        if not result:
            empty.append(where)
    # Panels about traffic that happened must show it.
    for title in ("Requests by outcome", "Rejections by reason", "Request latency", "AS responses by status",
                  "Build info"):
        assert not [where for where in empty if where == f"panel {title}"], f"{title} returned no data"
