"""The YAML contract as frozen, typed objects; validated once at load (README: Configuration).

Single-key rules (types, bounds, enums) live here; rules across keys live in consistency.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gateway.config.types import Duration, Network, PositiveDuration, RateValue, SecretRef, duration_in
from gateway.jose.keys import ALGORITHM_NAMES
from gateway.jose.keys import AlgorithmName as Algorithm

SubjectFormat = Literal["tel", "operatortoken"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class TLSFiles(Section):
    """A TLS listener: its certificate (re-read on SIGHUP), the oldest protocol and the ciphers it
    accepts, and optionally the CA of the client certificates it asks for (mTLS callers)."""

    cert_file: Path
    key_file: Path
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); unset: OpenSSL's defaults.
    ciphers: str | None = Field(None, min_length=1)
    client_ca_file: Path | None = None
    # With client_ca_file: required (no certificate, no connection) or optional (checked if given).
    client_auth: Literal["required", "optional"] = "required"


class Listen(Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    # The main listener's HTTP server: the lean one (asyncio + httptools, server/http1.py) or aiohttp's.
    engine: Literal["lean", "aiohttp"] = "lean"
    tls: TLSFiles | None = None
    trusted_proxies: tuple[Network, ...] = ()


class Readiness(Section):
    # false (default): /readyz does not fail while the AS is unreachable (the token route answers 503
    # + Retry-After itself; failing readiness would take every replica out at once). true: it does.
    require_upstream: bool = False
    # The AS probe's answer is reused this long: probes do not each send a request to the AS.
    upstream_probe_interval: PositiveDuration = 10.0


class Admin(Section):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    readiness: Readiness = Readiness()
    # /metrics only with `Authorization: Bearer <token>` (a secret reference); /healthz and /readyz stay open.
    metrics_token: SecretRef | None = None
    # TLS on the admin listener; with tls.client_ca_file, /metrics needs a client certificate from that CA
    # (the handshake asks for one but does not require it, so that probes without one still work).
    tls: TLSFiles | None = None


# Request headers a forwarded (passthrough) request keeps by default; everything else the caller sent
# stays at the gateway (X-Real-IP, X-Original-URL, Cookie, Content-Encoding...: fields an AS or its
# proxy might trust). X-Request-Id and the trace context are the gateway's own (README: Correlation).
DEFAULT_PASSTHROUGH_HEADERS = (
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "content-type",
    "dpop",
    "if-modified-since",
    "if-none-match",
    "user-agent",
)


class Passthrough(Section):
    other_grants: Literal["forward", "deny"] = "forward"
    other_paths: Literal["forward", "deny"] = "deny"
    # The request headers forwarded with other grants and paths (the allow-list); unset: the defaults above.
    headers: tuple[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")], ...] | None = None

    @property
    def allowed_headers(self) -> frozenset[str]:
        return frozenset(h.lower() for h in (self.headers if self.headers is not None else DEFAULT_PASSTHROUGH_HEADERS))


class UpstreamTimeouts(Section):
    connect: PositiveDuration = 1.0
    total: PositiveDuration = 5.0


class UpstreamTLS(Section):
    ca_file: Path | None = None
    verify: bool = True


class CircuitBreakerSettings(Section):
    failures: int = Field(5, ge=1)
    open_for: PositiveDuration = 10.0


class Upstream(Section):
    token_url: AnyHttpUrl
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    max_connections: int = Field(100, ge=1)
    max_in_flight: int = Field(200, ge=1)
    tls: UpstreamTLS = UpstreamTLS()
    retry_after: Duration = 5.0
    circuit_breaker: CircuitBreakerSettings | None = CircuitBreakerSettings()
    # An AS answer larger than this is refused (upstream_bad_response) rather than held in memory.
    max_response_bytes: int = Field(1_048_576, ge=1024)


class Limits(Section):
    max_body_bytes: int = Field(8192, ge=256, le=1_048_576)
    max_assertion_bytes: int = Field(4096, ge=256)
    max_form_params: int = Field(16, ge=2, le=256)
    read_timeout: PositiveDuration = 5.0
    max_header_bytes: int = Field(16384, ge=1024)
    max_headers: int = Field(64, ge=8)
    max_field_bytes: int = Field(8190, ge=256)
    keepalive_timeout: PositiveDuration = 15.0
    max_concurrent_requests: int = Field(1000, ge=1)
    max_jwt_header_bytes: int = Field(1024, ge=64)
    max_jwt_payload_bytes: int = Field(2048, ge=128)
    max_kid_length: int = Field(128, ge=1, le=1024)
    max_jti_length: int = Field(256, ge=8, le=4096)

    @model_validator(mode="after")
    def _assertion_fits_body(self) -> Limits:
        if self.max_assertion_bytes >= self.max_body_bytes:
            raise ValueError("max_assertion_bytes must be smaller than max_body_bytes")
        return self


class Profile(Section):
    audiences: tuple[str, ...] = ()
    max_lifetime: PositiveDuration = 300.0
    clock_skew: Duration = 0.0
    algorithms: tuple[Algorithm, ...] = ALGORITHM_NAMES
    required_claims: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat", "jti", "scope")
    subject_formats: tuple[SubjectFormat, ...] = ("tel", "operatortoken")
    forbid_scope_parameter: bool = True
    drop_refresh_token: bool = True
    errors: Literal["implicit-client-auth", "rfc7523"] = "implicit-client-auth"
    incoming_client_auth: Literal["reject", "strip", "forward"] = "reject"
    # How a replayed assertion is recognised (README "Replay policy"): jti = each (iss, jti) once (CAMARA;
    # jti required); assertion = each signed content (header.payload) once, for RFC 7523 clients that
    # send no jti; off = not at all (only for an AS with its own replay defence).
    replay: Literal["jti", "assertion", "off"] = "jti"

    @field_validator("algorithms", "audiences")
    @classmethod
    def _unique_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("required_claims")
    @classmethod
    def _iss_exp_required(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # RFC 7523 §3 items 1 and 4, and the replay set's expiry, need these; they cannot be switched off.
        missing = {"iss", "exp"} - set(value)
        if missing:
            raise ValueError(f"must include {sorted(missing)} (the replay set and RFC 7523 §3 need them)")
        return value

    @model_validator(mode="after")
    def _jti_required_for_jti_replay(self) -> Profile:
        if self.replay == "jti" and "jti" not in self.required_claims:
            raise ValueError(
                "required_claims must include 'jti' when replay is 'jti' (the default: each (iss, jti) is "
                "accepted once); add 'jti', or set replay: assertion (each signed assertion once) or off"
            )
        return self


class Bucket(Section):
    rate: RateValue
    burst: int = Field(ge=1)


class RateLimits(Section):
    per_ip: Bucket | None = Bucket(rate="50/s", burst=100)
    # IPv6 callers are limited per network of this prefix length (per_ip, per_issuer_unverified).
    ipv6_prefix: int = Field(64, ge=32, le=128)
    per_issuer_unverified: Bucket | None = Bucket(rate="200/s", burst=400)
    per_client: Bucket | None = Bucket(rate="20/s", burst=40)
    global_: Bucket | None = Field(Bucket(rate="2000/s", burst=4000), alias="global")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


HostPort = Annotated[str, Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")]


class RedisTLS(Section):
    """TLS to Redis (and to the sentinels): the CA to verify the server, a client certificate if asked."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _pair(self) -> RedisTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("state.redis.tls: cert_file and key_file go together")
        return self


class RedisSettings(Section):
    mode: Literal["single", "sentinel", "cluster"] = "single"
    url: str = "redis://127.0.0.1:6379/0"  # mode single
    sentinels: tuple[HostPort, ...] = ()  # mode sentinel: host:port of each sentinel
    service_name: str = "mymaster"  # mode sentinel: the monitored primary's name
    db: int = Field(0, ge=0)  # mode sentinel (cluster has only db 0; single takes it from the url)
    nodes: tuple[HostPort, ...] = ()  # mode cluster: seed nodes, the rest is discovered
    username: SecretRef | None = None  # ACL user
    password: SecretRef | None = None
    sentinel_username: SecretRef | None = None
    sentinel_password: SecretRef | None = None
    tls: RedisTLS | None = None
    # Every key starts with it, so that deployments can share a Redis without sharing state.
    prefix: str = Field("bearer-gateway:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")
    timeout: PositiveDuration = 0.05
    on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    # WAIT for this many replicas after recording a jti (0: asynchronous replication only).
    replay_wait_replicas: int = Field(0, ge=0, le=16)

    @model_validator(mode="after")
    def _mode_settings(self) -> RedisSettings:
        if self.mode == "sentinel" and not self.sentinels:
            raise ValueError("state.redis.sentinels: mode sentinel needs at least one sentinel address (host:port)")
        if self.mode == "cluster" and not self.nodes:
            raise ValueError("state.redis.nodes: mode cluster needs at least one seed node (host:port)")
        if self.mode != "single" and "url" in self.model_fields_set:
            raise ValueError(f"state.redis.url: only for mode single (mode is {self.mode})")
        return self


class State(Section):
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisSettings = RedisSettings()
    max_replay_entries: int = Field(1_000_000, ge=1000)


class GatewayKey(Section):
    kid: str = Field(min_length=1, max_length=128)
    alg: Algorithm
    private_key_file: Path


class GatewaySection(Section):
    issuer: str = "http://127.0.0.1:8080"
    keys: tuple[GatewayKey, ...] = ()
    jwks_max_age: Duration = 300.0

    @field_validator("keys")
    @classmethod
    def _unique_kids(cls, value: tuple[GatewayKey, ...]) -> tuple[GatewayKey, ...]:
        kids = [key.kid for key in value]
        if len(set(kids)) != len(kids):
            raise ValueError("gateway key kids must be unique")
        return value


class PemKey(Section):
    file: Path
    alg: Algorithm | None = None
    kid: str | None = None


class ClientKeys(Section):
    """Exactly one source of the client's public keys."""

    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None
    pem: tuple[PemKey, ...] | None = None
    jwks_uri: AnyHttpUrl | None = None
    ttl: PositiveDuration = 300.0
    refresh_cooldown: Duration = 30.0
    fetch_timeout: PositiveDuration = 2.0
    max_bytes: int = Field(65536, ge=1024)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ClientKeys:
        given = [name for name in ("jwks", "jwks_file", "pem", "jwks_uri") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of jwks, jwks_file, pem, jwks_uri; got {given or 'none'}")
        return self


class ClientAuth(Section):
    method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none"] = "none"
    client_id: str | None = None
    secret: SecretRef | None = None
    private_key_file: Path | None = None  # private_key_jwt with a per-client key
    use_gateway_key: bool = False  # private_key_jwt signed with the first gateway key
    alg: Algorithm | None = None
    kid: str | None = None
    audience: str | None = None  # aud of the client assertion; default the AS token URL
    # iss of the client assertion: the AS client id (RFC 7523 §2.2), or gateway.issuer for a
    # federated credential the gateway issues about the client (Keycloak's federated-jwt).
    assertion_issuer: Literal["client_id", "gateway"] = "client_id"
    cert_file: Path | None = None
    key_file: Path | None = None


class ClientUpstream(Section):
    mode: Literal["forward", "resign"] = "forward"
    audience: str | None = None
    lifetime: duration_in(at_least=1.0, at_most=300.0) = 60.0  # type: ignore[valid-type]  # the re-issued assertion: short-lived
    copy_claims: tuple[str, ...] = ("scope",)
    subject_map: dict[str, str] = {}
    scope_parameter: bool = False
    client_auth: ClientAuth = ClientAuth()


class Client(Section):
    client_id: str = Field(min_length=1, max_length=256)
    enabled: bool = True
    keys: ClientKeys
    algorithms: tuple[Algorithm, ...] | None = None
    grant_types: tuple[str, ...] = ("jwt-bearer",)
    rate_limit: Bucket | None = None
    upstream: ClientUpstream = ClientUpstream()


class Logging(Section):
    # Operator logs (stderr): one JSON object per line, or `time LEVEL logger message key=value`.
    format: Literal["json", "text"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    audit: bool = True  # the audit line per token request (stdout, always JSON)


class GatewayConfig(Section):
    """The whole file; every section has a safe default except `upstream`."""

    listen: Listen = Listen()
    admin: Admin = Admin()
    workers: int = Field(1, ge=1, le=64)
    token_paths: tuple[Annotated[str, Field(pattern=r"^/[!-~]*$")], ...] = ("/oauth2/token",)
    passthrough: Passthrough = Passthrough()
    upstream: Upstream
    limits: Limits = Limits()
    profile: Profile = Profile()
    rate_limits: RateLimits = RateLimits()
    state: State = State()
    gateway: GatewaySection = GatewaySection()
    logging: Logging = Logging()
    clients: tuple[Client, ...] = ()

    @field_validator("clients", mode="before")
    @classmethod
    def _clients_are_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            names = ", ".join(str(k) for k in list(value)[:3])
            raise ValueError(
                f"expected a list of clients, each item starting with '- client_id: ...'; got a mapping (keys: {names})"
            )
        return value

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, value: tuple[Client, ...]) -> tuple[Client, ...]:
        seen: set[str] = set()
        for client in value:
            if client.client_id in seen:
                raise ValueError(f"client_id {client.client_id!r} appears twice")
            seen.add(client.client_id)
        return value
