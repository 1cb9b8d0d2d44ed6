"""A real Ory Hydra v2.3.0 for end-to-end tests and the demo, built by scripts/hydra.sh.

Stdlib only (like keycloak_proc), so tests, the demo and deploy/hydra/probe.py share it::

    hydra = HydraProcess(token_url="http://127.0.0.1:<gateway port>/oauth2/token")
    hydra.start()                   # build once (cached), `hydra serve all --dev`, DSN=memory, wait until ready
    hydra.create_client(CLIENT_ID, SECRET, scope="...")
    hydra.trust_issuer("acme-app", jwk, scope=[...])       # POST /admin/trust/grants/jwt-bearer/issuers
    hydra.token_requests_seen()     # POST /oauth2/token requests Hydra handled (from its JSON request log)
    hydra.token_requests_metric()   # the same from its Prometheus endpoint (http_requests_total)
    hydra.stop()

Hydra runs with the committed deploy/hydra/hydra.yml; the environment overrides ports, issuer, the
advertised token URL, DSN and the system secret. Every credential here is a throwaway test value.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "hydra.sh"
CONFIG_FILE = ROOT / "deploy" / "hydra" / "hydra.yml"
HYDRA_VERSION = "v2.3.0"

CLIENT_ID = "camara-app"                                  # the client the gateway authenticates as
CLIENT_SECRET = "camara-app-secret-TEST-ONLY-not-a-real-secret"
SYSTEM_SECRET = "hydra-system-secret-TEST-ONLY-32+chars"  # Hydra encrypts its store with this
SCOPES = ("dpv:FraudPreventionAndDetection", "sim-swap:check", "sim-swap:retrieve-date")
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/oauth2/token"

_BUILD_TIMEOUT = 1800.0


class HydraError(RuntimeError):
    pass


def tool_status() -> str | None:
    """None when Hydra can be built or is built, else what is missing."""
    if Path(binary_path()).is_file():
        return None
    missing = [tool for tool in ("go", "gcc", "bash", "flock") if shutil.which(tool) is None]
    return "Hydra e2e tests need: " + ", ".join(missing) if missing else None


def _cache_dir() -> Path:
    return Path(os.environ.get("BG_CACHE") or Path.home() / ".cache" / "bearer-gateway")


def binary_path() -> str:
    return str(_cache_dir() / f"hydra-{HYDRA_VERSION[1:]}" / "bin" / "hydra")


def install(timeout: float = _BUILD_TIMEOUT) -> Path:
    """`scripts/hydra.sh install`: builds Hydra once (a few minutes cold), then ~0.1 s."""
    env = {**os.environ, "BG_CACHE": str(_cache_dir())}
    proc = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise HydraError(f"scripts/hydra.sh install failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(client_id: str, secret: str) -> dict[str, str]:
    cred = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}


def post_form(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    return _send(req)


def _send(req: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class HydraProcess:
    """`hydra serve all --dev` with DSN=memory on two free 127.0.0.1 ports."""

    def __init__(self, token_url: str | None = None, *, public_port: int | None = None,
                 admin_port: int | None = None, startup_timeout: float = 60.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.advertised_token_url = token_url   # webfinger.oidc_discovery.token_url (the gateway's)
        self.public_port = public_port
        self.admin_port = admin_port
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self.install_seconds: float | None = None

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def issuer(self) -> str:
        return self.public_url + "/"

    @property
    def token_url(self) -> str:
        """Hydra's own token endpoint (always an accepted assertion `aud`)."""
        return self.public_url + TOKEN_PATH

    def start(self) -> HydraProcess:
        t0 = time.monotonic()
        binary = install()
        self.install_seconds = time.monotonic() - t0
        if self.public_port is None:
            self.public_port = free_port()
        if self.admin_port is None:
            self.admin_port = free_port()
            while self.admin_port == self.public_port:
                self.admin_port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="bg-hydra-"))
        self.log_path = self.run_dir / "hydra.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.run_dir),
            "DSN": "memory", "SECRETS_SYSTEM": SYSTEM_SECRET,
            "SERVE_PUBLIC_PORT": str(self.public_port), "SERVE_ADMIN_PORT": str(self.admin_port),
            "URLS_SELF_ISSUER": self.issuer,
            "WEBFINGER_OIDC_DISCOVERY_TOKEN_URL": self.advertised_token_url or self.token_url,
            **self.extra_env,
        }
        t1 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "all", "--dev", "--sqa-opt-out", "-c", str(CONFIG_FILE)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = t1 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HydraError(f"Hydra exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                self.startup_seconds = time.monotonic() - t1
                return self
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise HydraError(f"Hydra not ready after {self.startup_timeout:.0f}s:\n{tail}")

    def _ready(self) -> bool:
        for url in (self.admin_url + "/health/ready", self.public_url + "/health/ready"):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self.run_dir is not None and not os.environ.get("BG_KEEP_HYDRA_RUN"):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> HydraProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")

    # ------------------------------------------------------------ admin API
    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        status, answer = _send(req)
        if status >= 300:
            raise HydraError(f"{method} {path}: {status} {answer}")
        return answer

    def create_client(self, client_id: str, secret: str | None = None, *, scope: str = " ".join(SCOPES),
                      auth_method: str = "client_secret_basic", jwks: dict[str, Any] | None = None,
                      jwks_uri: str | None = None, signing_alg: str | None = None,
                      grant_types: tuple[str, ...] = (GRANT_TYPE,)) -> Any:
        """An OAuth 2.0 client for the credentials the gateway injects (POST /admin/clients)."""
        body: dict[str, Any] = {"client_id": client_id, "grant_types": list(grant_types), "scope": scope,
                                "token_endpoint_auth_method": auth_method, "response_types": ["token"]}
        if secret is not None:
            body["client_secret"] = secret
        if jwks is not None:
            body["jwks"] = jwks
        if jwks_uri is not None:
            body["jwks_uri"] = jwks_uri
        if signing_alg is not None:  # private_key_jwt: Hydra's default is RS256 only
            body["token_endpoint_auth_signing_alg"] = signing_alg
        return self.admin("POST", "/admin/clients", body)

    def trust_issuer(self, issuer: str, jwk: dict[str, Any], *, scope: tuple[str, ...] = SCOPES,
                     subject: str | None = None, days: int = 30) -> Any:
        """A trusted JWT-grant issuer relationship (POST /admin/trust/grants/jwt-bearer/issuers)."""
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        body: dict[str, Any] = {"issuer": issuer, "jwk": jwk, "scope": list(scope),
                                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if subject is None:
            body["allow_any_subject"] = True
        else:
            body["subject"] = subject
        return self.admin("POST", "/admin/trust/grants/jwt-bearer/issuers", body)

    def introspect(self, token: str) -> Any:
        req = urllib.request.Request(self.admin_url + "/admin/oauth2/introspect",
                                     data=urllib.parse.urlencode({"token": token}).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        return _send(req)[1]

    # ------------------------------------------------------- what reached it
    def requests(self) -> list[dict[str, Any]]:
        """Hydra's JSON request log: one 'completed handling request' line per HTTP request."""
        out = []
        for line in self.log_tail(50_000_000).splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "completed handling request":
                out.append(entry)
        return out

    def token_requests_seen(self) -> int:
        """POST /oauth2/token requests Hydra answered (any status), counted from its own log."""
        return sum(1 for e in self.requests() if _path_of(e) == TOKEN_PATH and _method_of(e) == "POST")

    def token_requests_metric(self) -> int:
        """The same count from Hydra's Prometheus endpoint: http_requests_total{endpoint="/oauth2/token"}."""
        with urllib.request.urlopen(self.admin_url + "/admin/metrics/prometheus", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("http_requests_total{") and 'endpoint="/oauth2/token"' in line \
                    and 'method="post"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


def _path_of(entry: dict[str, Any]) -> str:
    req = entry.get("http_request") or {}
    return str(req.get("path") or "")


def _method_of(entry: dict[str, Any]) -> str:
    req = entry.get("http_request") or {}
    return str(req.get("method") or "")
