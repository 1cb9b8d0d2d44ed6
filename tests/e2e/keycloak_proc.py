"""A real Keycloak 26.7.3 for end-to-end tests, started through scripts/keycloak.sh.

No pytest fixtures here: plain functions and a class, stdlib only, so tests, benchmarks and
the demo can all use it. Typical fixture::

    from tests.e2e import keycloak_proc as kcp

    @pytest.fixture(scope="session")
    def keycloak(gateway_ports):                 # however the gateway's port is chosen
        why = kcp.tool_status()
        if why:
            pytest.skip(why)
        kc = kcp.KeycloakProcess(gateway_issuer=f"http://127.0.0.1:{gateway_ports.main}")
        kc.start()                               # install (cached), start, wait until ready
        yield kc
        kc.stop()

    kc.token_url      # http://127.0.0.1:<port>/realms/camara/protocol/openid-connect/token
    kc.issuer         # http://127.0.0.1:<port>/realms/camara  (aud of re-issued assertions)
    kc.count_events(kcp.EVENT_GRANT, kcp.EVENT_GRANT_ERROR)   # token requests that reached Keycloak

The realm's identity providers trust ``gateway_issuer`` and fetch the gateway's keys from
``gateway_jwks_url`` (default ``<gateway_issuer>/.well-known/jwks.json``). Keycloak caches those
keys per ``kid`` and refetches on an unknown ``kid`` at most once every 10 s, so start the
gateway (its JWKS) before the first token request, or expect "Invalid signature" for up to 10 s.

Every credential here is a throwaway test value.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "keycloak.sh"
REALM_FILE = ROOT / "deploy" / "keycloak" / "realm-camara.json"
KEYCLOAK_VERSION = "26.7.3"

REALM = "camara"
ADMIN_USER = "admin"                       # master realm admin (test only)
ADMIN_PASSWORD = "admin"
IDP_ALIAS = "bearer-gateway"               # jwt-authorization-grant provider: trusts re-issued assertions
CLIENT_ASSERTION_IDP_ALIAS = "bearer-gateway-clients"   # oidc provider: trusts gateway-signed client assertions
SECRET_CLIENT_ID = "camara-app-secret"     # client-secret authenticator
SECRET_CLIENT_SECRET = "camara-app-secret-TEST-ONLY-not-a-real-secret"
PKJWT_CLIENT_ID = "camara-app-pkjwt"       # federated-jwt authenticator (client assertion signed by the gateway key)
# Subscribers: the assertion sub (= the federated identity userId of the link to IDP_ALIAS) and the
# Keycloak username (= preferred_username in the access token). The admin API refuses ':' in usernames.
USERS = ("tel:+34600000001", "tel:+34600000002")
USERNAMES = {"tel:+34600000001": "+34600000001", "tel:+34600000002": "+34600000002"}
SCOPES = ("dpv:FraudPreventionAndDetection", "sim-swap:check", "sim-swap:retrieve-date")
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Every token request with grant_type=jwt-bearer leaves exactly one of these events (client
# authentication failures included).
EVENT_GRANT = "JWT_AUTHORIZATION_GRANT"
EVENT_GRANT_ERROR = "JWT_AUTHORIZATION_GRANT_ERROR"

_INSTALL_TIMEOUT = 900.0


class KeycloakError(RuntimeError):
    pass


def tool_status() -> str | None:
    """None when Keycloak can run here, else a message naming what to install."""
    missing = []
    if _find_java() is None:
        missing.append("a JDK 17+ (21 or 25 preferred; e.g. under /usr/lib/jvm)")
    cache = _cache_dir()
    installed = (cache / f"keycloak-{KEYCLOAK_VERSION}" / "bin" / "kc.sh").is_file()
    zipped = (cache / "dl" / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip").is_file()
    if not installed and not zipped and shutil.which("mvn") is None:
        missing.append("Maven (mvn), to fetch org.keycloak:keycloak-quarkus-dist:26.7.3:zip")
    if not installed and shutil.which("unzip") is None:
        missing.append("unzip")
    for tool in ("bash", "curl", "flock", "setsid", "python3"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not missing:
        return None
    return "Keycloak e2e tests need: " + ", ".join(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


def install(timeout: float = _INSTALL_TIMEOUT) -> Path:
    """Run ``scripts/keycloak.sh install`` (idempotent, ~2 min the first time) and return the home."""
    proc = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True,
                          timeout=timeout, env=_script_env())
    if proc.returncode != 0:
        raise KeycloakError(f"scripts/keycloak.sh install failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise KeycloakError("scripts/keycloak.sh install printed no home")
    return Path(lines[-1])


class KeycloakProcess:
    """One Keycloak process with its own data directory, on 127.0.0.1 free ports."""

    def __init__(
        self,
        gateway_issuer: str = "http://127.0.0.1:8080",
        gateway_jwks_url: str | None = None,
        *,
        realm_files: list[str | os.PathLike[str]] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        http_port: int | None = None,
        mgmt_port: int | None = None,
        startup_timeout: float = 300.0,
        keep_run_dir: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.gateway_issuer = gateway_issuer.rstrip("/")
        self.gateway_jwks_url = gateway_jwks_url or f"{self.gateway_issuer}/.well-known/jwks.json"
        self.realm_files = [Path(f) for f in (realm_files or [REALM_FILE])]
        self._run_dir_arg = Path(run_dir) if run_dir else None
        self.http_port = http_port
        self.mgmt_port = mgmt_port
        self.startup_timeout = startup_timeout
        self.keep_run_dir = keep_run_dir or bool(os.environ.get("BG_KEEP_KEYCLOAK_RUN"))
        self.extra_env = dict(extra_env or {})
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None   # start() until ready (install excluded)
        self.install_seconds: float | None = None
        self._admin_token: tuple[str, float] | None = None

    # ----------------------------------------------------------------- URLs
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def issuer(self) -> str:
        """The realm issuer: the ``aud`` Keycloak accepts for assertions and client assertions."""
        return f"{self.base_url}/realms/{REALM}"

    realm_url = issuer

    @property
    def token_url(self) -> str:
        """Also accepted as ``aud`` of the grant assertion (not of a federated client assertion)."""
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    # ------------------------------------------------------------ lifecycle
    def start(self) -> KeycloakProcess:
        t0 = time.monotonic()
        install()
        self.install_seconds = time.monotonic() - t0
        fixed_ports = self.http_port is not None and self.mgmt_port is not None
        attempts = 1 if fixed_ports else 3
        last: Exception | None = None
        for _ in range(attempts):
            if not fixed_ports:
                self.http_port, self.mgmt_port = free_port_pair()
            try:
                self._start_once()
                return self
            except _PortInUse as e:
                last = e
                self._cleanup()
        raise KeycloakError(f"could not start Keycloak: {last}")

    def _start_once(self) -> None:
        if self._run_dir_arg is not None:
            self.run_dir = self._run_dir_arg
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix="bg-keycloak-"))
        self.log_path = self.run_dir / "keycloak.log"
        env = _script_env()
        env.update(GATEWAY_ISSUER=self.gateway_issuer, GATEWAY_JWKS_URL=self.gateway_jwks_url)
        env.update(self.extra_env)
        cmd = ["bash", str(SCRIPT), "start", str(self.http_port), str(self.mgmt_port), str(self.run_dir),
               *[str(f) for f in self.realm_files]]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail or "Port already bound" in tail:
                    raise _PortInUse(tail[-500:])
                raise KeycloakError(f"Keycloak exited with {self.proc.returncode} during start-up:\n{tail}")
            if self._ready():
                self.startup_seconds = time.monotonic() - t0
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise KeycloakError(f"Keycloak not ready after {self.startup_timeout:.0f}s:\n{tail}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.mgmt_url}/health/ready", timeout=2) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(self.issuer, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the whole process group (kc.sh and its java), then remove the run directory."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            # the java child can outlive kc.sh for a moment; make sure the group is gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.run_dir is not None and not self.keep_run_dir and self._run_dir_arg is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> KeycloakProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", "replace")

    # ------------------------------------------------------------ admin API
    def admin_token(self) -> str:
        """A master-realm admin access token (admin/admin), cached while it is valid."""
        now = time.monotonic()
        if self._admin_token and self._admin_token[1] > now:
            return self._admin_token[0]
        status, body = self.post_form(
            f"{self.base_url}/realms/master/protocol/openid-connect/token",
            {"grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER, "password": ADMIN_PASSWORD},
        )
        if status != 200 or not isinstance(body, dict):
            raise KeycloakError(f"admin token: {status} {body}")
        token = str(body["access_token"])
        self._admin_token = (token, now + max(5, int(body.get("expires_in", 60)) - 10))
        return token

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin REST API (path relative to /admin/realms/camara unless it starts with /)."""
        if not path.startswith("/"):
            path = f"/admin/realms/{REALM}/{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin_token()}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise KeycloakError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None
        return json.loads(raw) if raw else None

    def events(self, type: str | list[str] | tuple[str, ...] | None = None, *, client: str | None = None,
               user: str | None = None, max: int = 100_000) -> list[dict[str, Any]]:
        """Stored login events of the camara realm, newest first (GET /admin/realms/camara/events).

        ``type`` is one event type or several (e.g. EVENT_GRANT, EVENT_GRANT_ERROR). Keycloak's
        default page is 100 events, so ``max`` is set high on purpose.
        """
        query: list[tuple[str, str]] = [("max", str(max))]
        if isinstance(type, str):
            query.append(("type", type))
        elif type:
            query.extend(("type", t) for t in type)
        if client:
            query.append(("client", client))
        if user:
            query.append(("user", user))
        return self.admin("GET", "events?" + urllib.parse.urlencode(query)) or []

    def count_events(self, *types: str, client: str | None = None) -> int:
        """How many events of these types (default: both jwt-bearer grant types) are stored."""
        return len(self.events(list(types) or [EVENT_GRANT, EVENT_GRANT_ERROR], client=client))

    def token_requests_seen(self) -> int:
        """jwt-bearer token requests that reached Keycloak (successes + failures, auth failures included)."""
        return self.count_events(EVENT_GRANT, EVENT_GRANT_ERROR)

    def clear_events(self) -> None:
        self.admin("DELETE", "events")

    # --------------------------------------------------------------- client
    def token_request(self, form: dict[str, str], *, basic: tuple[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST a form to the realm token endpoint; returns (status, parsed JSON body)."""
        h = dict(headers or {})
        if basic is not None:
            import base64
            cred = f"{urllib.parse.quote(basic[0], safe='')}:{urllib.parse.quote(basic[1], safe='')}"
            h["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        return self.post_form(self.token_url, form, h)

    @staticmethod
    def post_form(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")


class _PortInUse(KeycloakError):
    pass


def _cache_dir() -> Path:
    return Path(os.environ.get("BG_CACHE") or Path.home() / ".cache" / "bearer-gateway")


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BG_CACHE", str(_cache_dir()))
    return env


def _find_java() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get("BG_JAVA_HOME"):
        candidates.append(Path(os.environ["BG_JAVA_HOME"]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(sorted(p for p in jvm.iterdir() if p.is_dir()))
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    which = shutil.which("java")
    if which:
        candidates.append(Path(which).resolve().parent.parent)
    for home in candidates:
        java = home / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK) and (_java_major(home) or 0) >= 17:
            return home
    return None


def _java_major(home: Path) -> int | None:
    release = home / "release"
    try:
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                v = line.split("=", 1)[1].strip('"')
                return int(v.split(".")[0])
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run([str(home / "bin" / "java"), "-version"], capture_output=True, text=True,
                             timeout=30).stderr
        v = out.split('"')[1]
        return int(v.split(".")[0]) if not v.startswith("1.") else int(v.split(".")[1])
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return None
