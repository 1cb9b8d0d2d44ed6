"""The processes a benchmark run starts and owns: nginx as static AS, Redis, the gateway, the references.

Every process is started in its own session so it (and any worker it forks) can be stopped by its
own process-group id; nothing here touches a process it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The fixed answer of the static AS: shaped like Keycloak's jwt-bearer answer (no refresh token).
STATIC_TOKEN = (
    '{"access_token":"'
    + "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
    + "x" * 900
    + '.sig","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer",'
    '"not-before-policy":0,"scope":"dpv:FraudPreventionAndDetection sim-swap:check"}'
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """Prefix `cmd` with taskset when a CPU list is given and taskset exists."""
    if cpus is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cpus, *cmd]


class Proc:
    """A child process in its own session, with its output in a log file."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        workdir: Path,
        *,
        stdout: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        out = open(stdout or self.log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        err = open(self.log, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        out.close()
        err.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        # Our own session: its process group id is our child's pid, so workers go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)


def wait_http(url: str, proc: Proc, timeout: float = 30.0, *, method: str = "GET") -> None:
    """Wait until `url` answers any HTTP status; raise with the process log if it died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.tail()}")


def start_nginx(workdir: Path, cpus: str | None) -> tuple[Proc, str]:
    """nginx answering every request on /token with the fixed token JSON; our own process, not the service."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    home = workdir / "nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {home}/client_body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location = /token {{
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '{STATIC_TOKEN}';
        }}
        location / {{ return 404; }}
    }}
}}
""")
    proc = Proc("static-as", pinned([nginx, "-c", str(conf), "-p", str(home)], cpus), workdir)
    url = f"http://127.0.0.1:{port}/token"
    wait_http(url, proc, 10)
    return proc, url


def start_redis(
    workdir: Path, cpus: str | None, *, port: int | None = None, name: str = "redis", extra: Sequence[str] = ()
) -> tuple[Proc, int] | str:
    """A throwaway redis-server on a free loopback port, no persistence; a reason string if there is none."""
    server = shutil.which("redis-server")
    if server is None:
        return "redis-server not installed"
    port = port or free_port()
    home = workdir / name
    home.mkdir(exist_ok=True)
    cmd = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(home),
        "--protected-mode",
        "yes",
        *extra,
    ]
    # Redis shares the load generator's core; a higher priority keeps wrk from starving it (the gateway
    # answers 503 when a Redis round trip exceeds state.redis.timeout), as a Redis on its own host would be.
    if os.geteuid() == 0 and shutil.which("nice"):
        cmd = ["nice", "-n", "-10", *cmd]
    proc = Proc(name, pinned(cmd, cpus), workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return proc, port
        if not proc.alive():
            break
        time.sleep(0.1)
    proc.stop()
    return f"redis-server did not start: {proc.tail(3)}"


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so below the ephemeral range)."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def start_redis_cluster(workdir: Path, cpus: str | None, primaries: int = 3) -> tuple[list[Proc], list[int]] | str:
    """A Redis Cluster of `primaries` nodes (no replicas) made by `redis-cli --cluster create`."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return "redis-cli not installed"
    procs: list[Proc] = []
    ports: list[int] = []
    for index in range(primaries):
        started = start_redis(workdir, cpus, port=cluster_port(), name=f"redis-cluster-{index}",
                              extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        if isinstance(started, str):
            for proc in procs:
                proc.stop()
            return started
        procs.append(started[0])
        ports.append(started[1])
    create = subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-yes"],
        capture_output=True, timeout=30, check=False,
    )
    deadline = time.monotonic() + 20
    while create.returncode == 0 and time.monotonic() < deadline:
        if all(b"cluster_state:ok" in _redis_command(port, b"CLUSTER INFO") for port in ports):
            return procs, ports
        time.sleep(0.1)
    for proc in procs:
        proc.stop()
    return f"redis-cli --cluster create failed: {create.stdout[-200:]!r}"


def _redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(4096)


def redis_dbsize(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"DBSIZE\r\n")
        answer = sock.recv(64)
    return int(answer.strip().lstrip(b":") or 0)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its live descendants."""
    total = proc_cpu_seconds(pid)
    for child in _children(pid):
        total += tree_cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def export(rev: str, into: Path) -> Path:
    """The `gateway` package as it is at `rev`, extracted with git archive (for before/after runs)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "gateway"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def add_revision_arguments(parser: Any, repeat: int) -> None:
    """--rev and --repeat, as `measure_revisions` takes them."""
    parser.add_argument("--rev", help="also measure the gateway package at this git revision")
    parser.add_argument("--repeat", type=int, default=repeat, help="alternations of working tree and --rev")


def measure_revisions(
    child: Path, argv: Sequence[str], marker: str, *, rev: str | None, repeat: int, workdir: Path,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
) -> dict[str, list[dict[str, Any]]]:
    """Run `child` (a script printing `<marker> <json>` on stderr) with the working tree's `gateway`, and
    alternated with it the package at `rev` if given, `repeat` times each: name -> the JSON of each run."""
    versions: list[tuple[str, Path | None]] = [("working tree", None)]
    if rev:
        versions.append((rev, export(rev, workdir / "old")))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in versions}
    for _ in range(repeat):
        for name, source in versions:
            env = {**os.environ, "PYTHONPATH": f"{source}:{ROOT}" if source else str(ROOT)}
            done = subprocess.run(
                [str(VENV_BIN / "python"), "-P", str(child), *argv],
                env=env, cwd=workdir, stdout=stdout, stderr=subprocess.PIPE, check=False,
            )
            err = done.stderr.decode()
            line = next((ln for ln in err.splitlines() if ln.startswith(marker + " ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{name}: {err[-800:]}")
            results[name].append(json.loads(line.removeprefix(marker + " ")))
    return results
