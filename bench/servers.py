"""Start the systems under test for one benchmark: the gateway (configured like a deployment) and the references."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.assertions import AUDIENCE, BenchClient
from bench.procs import ROOT, VENV_BIN, Proc, free_port, pinned, wait_http

TOKEN_PATH = "/oauth2/token"
# Rate limits are parsed but not enforced yet; generous values keep them out of the way once they are,
# while still making the gateway pay for the limiter (they are not switched off).
GENEROUS = {"rate": "1000000/s", "burst": 1000000}


@dataclass
class Bench:
    """What every scenario shares: the work directory, the static AS, Redis, the client keys, CPU placement."""

    workdir: Path
    static_as: str
    clients: dict[str, BenchClient]
    server_cpus: str | None  # where the system under test runs
    load_cpus: str | None  # where wrk, nginx and Redis run
    redis_port: int | None = None
    redis_missing: str | None = None
    redis_cluster_ports: list[int] = field(default_factory=list)  # scenario 4c, while it runs
    started: list[Proc] = field(default_factory=list)


@dataclass
class Server:
    name: str
    url: str
    proc: Proc
    kind: str  # "gateway" or "reference"
    admin_url: str | None = None

    def stop(self) -> None:
        self.proc.stop()


def gateway_config(
    bench: Bench,
    *,
    port: int,
    admin_port: int,
    backend: str = "memory",
    workers: int = 1,
    upstream_url: str | None = None,
    clients: list[dict[str, Any]] | None = None,
    audiences: list[str] | None = None,
    gateway_section: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A deployment-like config: audit log on, injected client_secret_basic, generous rate limits."""
    secret = bench.workdir / "client-secret"
    secret.write_text("bench-client-secret-not-a-real-one\n")
    if clients is None:
        clients = [
            {
                "client_id": client.client_id,
                "keys": {"jwks": json.loads(json.dumps(client.jwks()))},
                "algorithms": [client.alg],
                "rate_limit": GENEROUS,
                "upstream": {
                    "mode": "forward",
                    "client_auth": {"method": "client_secret_basic", "secret": {"file": str(secret)}},
                },
            }
            for client in bench.clients.values()
        ]
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "workers": workers,
        "token_paths": [TOKEN_PATH],
        "upstream": {
            "token_url": upstream_url or bench.static_as,
            "timeouts": {"connect": "1s", "total": "5s"},
            "max_connections": 100,
            "max_in_flight": 1000,
        },
        "profile": {"audiences": audiences or [AUDIENCE]},
        "rate_limits": {
            "per_ip": GENEROUS,
            "per_issuer_unverified": GENEROUS,
            "per_client": GENEROUS,
            "global": GENEROUS,
        },
        "state": {"backend": backend},
        "logging": {"level": "info", "audit": True},
        "clients": clients,
    }
    if backend == "redis":
        config["state"]["redis"] = {"url": f"redis://127.0.0.1:{bench.redis_port}/0", "timeout": "50ms"}
    if backend == "redis-cluster":
        nodes = [f"127.0.0.1:{port}" for port in bench.redis_cluster_ports]
        config["state"] = {"backend": "redis", "redis": {"mode": "cluster", "nodes": nodes, "timeout": "50ms"}}
    if gateway_section:
        config["gateway"] = gateway_section
    return config


def gateway_command(*args: str) -> list[str]:
    """`python -P ...`: -P keeps the current folder (the repository) off sys.path, so PYTHONPATH decides."""
    return [str(VENV_BIN / "python"), "-P", *args]


def gateway_env(source: Path | None) -> dict[str, str]:
    """PYTHONPATH naming the tree whose `gateway` package runs: `source`, or this working tree."""
    return {"PYTHONPATH": str(source or ROOT)}


def gateway_origin(source: Path | None) -> Path:
    """Where the `gateway` package a side imports really comes from (asked of the same interpreter and env)."""
    out = subprocess.run(
        gateway_command("-c", "import gateway; print(gateway.__file__)"),
        cwd=ROOT,
        env={**os.environ, **gateway_env(source)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out).resolve().parent


def start_gateway(
    bench: Bench, name: str, config: dict[str, Any], *, cpus: str | None, source: Path | None = None
) -> Server | str:
    """Run `bearer-gateway run -c` on the config; a reason string when the gateway refuses it or does not start.

    `source`: a directory holding another version of the `gateway` package to run instead (bench.ab).
    """
    path = bench.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The audit log (one JSON line per request, on stdout) goes to a file, as a deployment would keep it.
    proc = Proc(
        name,
        pinned(gateway_command("-m", "gateway.cli", "run", "-c", str(path)), cpus),
        bench.workdir,
        stdout=bench.workdir / f"{name}.audit.jsonl",
        env=gateway_env(source),
    )
    bench.started.append(proc)
    url = f"http://127.0.0.1:{config['listen']['port']}"
    try:
        wait_http(url + "/.well-known/jwks.json", proc, 30)
    except RuntimeError:
        proc.stop()
        lines = [ln for ln in proc.tail(30).splitlines() if ln.strip()]
        return "the gateway did not start: " + (" | ".join(lines[-3:]) if lines else "no output")
    return Server(name, url, proc, "gateway", f"http://127.0.0.1:{config['admin']['port']}")


def start_reference(bench: Bench, kind: str, *, key: BenchClient | None = None, cpus: str | None) -> Server:
    port = free_port()
    cmd = [str(VENV_BIN / "python"), "-m", "bench.refs", kind, "--port", str(port)]
    if kind.endswith("verify-proxy"):
        assert key is not None
        pem = bench.workdir / f"{key.client_id}.pub.pem"
        pem.write_bytes(key.public_pem())
        cmd += ["--key", str(pem), "--upstream", bench.static_as]
    name = f"ref-{kind}" + (f"-{key.alg.lower()}" if key else "")
    proc = Proc(name, pinned(cmd, cpus), bench.workdir)
    bench.started.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + TOKEN_PATH, proc, 30)
    return Server(name, url, proc, "reference")
