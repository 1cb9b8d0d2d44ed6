"""A real Prometheus server (the Debian `prometheus` package) on a free loopback port, with a temp config."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

INSTALL_HINT = "prometheus is not installed: apt-get install prometheus (.ci/run installs it)"
JOB = "bearer-gateway"  # the job name the alert rules select (deploy/prometheus/prometheus.yml)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; a clear failure (never a skip) when the package is missing."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def fast_rules(source: Path, destination: Path, interval: str = "1s", drop_for: bool = False) -> Path:
    """A copy of a rules file whose groups evaluate every `interval` (and, with drop_for, fire at once)."""
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        group["interval"] = interval
        if drop_for:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "0s"
    destination.write_text(yaml.safe_dump(document, sort_keys=False))
    return destination


class PrometheusServer:
    """Scrapes `targets` (host:port of admin listeners) every `scrape_interval` and evaluates `rule_files`."""

    def __init__(self, targets: list[str], rule_files: list[Path] | None = None, scrape_interval: str = "1s") -> None:
        self.binary = binary("prometheus")
        self.targets = targets
        self.rule_files = [str(path) for path in rule_files or []]
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bg-prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def start(self, timeout: float = 30) -> PrometheusServer:
        config = self.dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- HTTP API ----------------------------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises with Prometheus' own error text otherwise."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/api/v1/{path}", params=params) as r:
            document = await r.json(content_type=None)
        if document.get("status") != "success":
            raise AssertionError(f"{path} {params}: {document.get('errorType')}: {document.get('error')}")
        return document["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector as a list of {metric, value}."""
        data = await self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    async def values(self, expr: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """{label values of `by`: value} for an instant query."""
        return {
            tuple(item["metric"].get(label, "") for label in by): float(item["value"][1])
            for item in await self.query(expr)
        }

    async def targets_up(self) -> list[dict[str, Any]]:
        data = await self.api("targets", state="active")
        return list(data["activeTargets"])

    async def wait_for(self, what: str, predicate: Any, timeout: float = 30, interval: float = 0.25) -> Any:
        """Poll an async predicate until it returns a truthy value; fail naming `what` and the last value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await predicate()
            if last:
                return last
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self.api("alerts")
        return list(data["alerts"])

    async def rule_groups(self) -> list[dict[str, Any]]:
        data = await self.api("rules")
        return list(data["groups"])
