"""Objects built once from a validated config: clients with parsed keys, state, upstream, pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp

from gateway.checks.context import Check
from gateway.checks.pipeline import build_pipeline, request_limits
from gateway.checks.rate_limits import Limiter
from gateway.clients import ClientRuntime
from gateway.config.load import ConfigError
from gateway.config.model import Client, GatewayConfig
from gateway.jose.jwks_remote import RemoteJWKS, RemoteJWKSSettings
from gateway.jose.keys import (
    RSA_ALGORITHMS,
    KeyLoadError,
    KeySet,
    key_from_pem,
    keys_from_jwks,
)
from gateway.jose.signing import SigningKey, load_signing_key
from gateway.metrics import metrics
from gateway.state import StateBackend, create_state
from gateway.upstream.builder import UpstreamRequestBuilder
from gateway.upstream.forward import UpstreamClient, new_breaker
from gateway.upstream.injected_auth import InjectedAuth

log = logging.getLogger("bearer_gateway")


def _read(path: Path, source: str, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, [(key, f"cannot read {path}: {exc.strerror}")]) from None


def _default_rsa_alg(algorithms: frozenset[str]) -> str | None:
    rsa = sorted(algorithms & RSA_ALGORITHMS)
    return rsa[0] if len(rsa) == 1 else None


def load_client_keys(client: Client, at: str, algorithms: frozenset[str], source: str) -> KeySet | RemoteJWKSSettings:
    """Parse a client's static keys once, or describe its remote JWKS; errors name the key path."""
    keys = client.keys
    default_alg = _default_rsa_alg(algorithms)
    try:
        if keys.jwks is not None:
            return KeySet(keys_from_jwks(keys.jwks, source="inline JWKS", default_alg=default_alg))
        if keys.jwks_file is not None:
            try:
                document = json.loads(_read(keys.jwks_file, source, f"{at}.keys.jwks_file"))
            except ValueError:
                raise ConfigError(source, [(f"{at}.keys.jwks_file", f"{keys.jwks_file} is not JSON")]) from None
            return KeySet(
                keys_from_jwks(document, source=str(keys.jwks_file), default_alg=default_alg)
            )
        if keys.pem is not None:
            return KeySet(
                key_from_pem(
                    _read(p.file, source, f"{at}.keys.pem[{j}].file"),
                    alg=p.alg,
                    kid=p.kid,
                    source=str(p.file),
                    default_alg=default_alg,
                )
                for j, p in enumerate(keys.pem)
            )
    except KeyLoadError as exc:
        raise ConfigError(source, [(f"{at}.keys", f"expected usable public keys: {exc}")]) from None
    assert keys.jwks_uri is not None
    return RemoteJWKSSettings(
        uri=str(keys.jwks_uri),
        timeout=keys.fetch_timeout,
        max_bytes=keys.max_bytes,
        ttl=keys.ttl,
        refresh_cooldown=keys.refresh_cooldown,
        default_alg=default_alg,
    )


def load_gateway_keys(config: GatewayConfig, source: str) -> list[SigningKey]:
    """Every gateway key parsed; all the unusable ones reported at once."""
    out = []
    problems: list[tuple[str, str]] = []
    for i, key in enumerate(config.gateway.keys):
        try:
            out.append(
                load_signing_key(
                    _read(key.private_key_file, source, f"gateway.keys[{i}].private_key_file"),
                    alg=key.alg,
                    kid=key.kid,
                    source=str(key.private_key_file),
                )
            )
        except KeyLoadError as exc:
            problems.append((f"gateway.keys[{i}]", str(exc)))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(source, problems)
    return out


def usable_algorithms_problem(keys: KeySet, algorithms: frozenset[str], at: str) -> tuple[str, str] | None:
    """A client whose static keys all have algorithms it may not use can never be verified."""
    if len(keys) == 0 or any(key.alg in algorithms for key in keys):
        return None
    found = ", ".join(sorted({f"{key.alg} (kid {key.kid})" for key in keys}))
    return (
        f"{at}.algorithms",
        f"expected an algorithm of at least one of the client's keys ({found}), got {sorted(algorithms)}",
    )


class Runtime:
    """Everything the request path reads; replaced whole on a config reload."""

    def __init__(self, config: GatewayConfig, source: str, *, state: StateBackend | None = None) -> None:
        self.config = config
        self.source = source
        problems: list[tuple[str, str]] = []
        try:
            self.gateway_keys = load_gateway_keys(config, source)
        except ConfigError as exc:
            problems += exc.problems  # reported with the clients' problems below
            self.gateway_keys = []
        self.upstream = UpstreamClient(config.upstream)
        # Forwarded (unauthenticated) grants: same in-flight cap, a circuit breaker of their own.
        self.passthrough_upstream = UpstreamClient(
            config.upstream, in_flight=self.upstream.in_flight, breaker=new_breaker(config.upstream)
        )
        self._upstreams: dict[tuple[str, str], UpstreamClient] = {}
        # A reload hands over the running state: the replay set must outlive a config change.
        self.state: StateBackend = state if state is not None else create_state(config.state)
        self.clients: dict[str, ClientRuntime] = {}
        self._remote: list[RemoteJWKS] = []
        token_url = str(config.upstream.token_url)
        signer = self.gateway_keys[0] if self.gateway_keys else None
        profile_algs = frozenset(config.profile.algorithms)
        for i, client in enumerate(config.clients):
            try:
                self._add_client(client, f"clients[{i}]", profile_algs, signer, token_url, source)
            except ConfigError as exc:
                problems += exc.problems  # every client's problems in one report
        if problems:
            raise ConfigError(source, problems)
        self.limiter = Limiter(
            self.state, config.state.redis.on_error, min(config.state.max_replay_entries, 100_000)
        )
        self.pipeline: tuple[Check, ...] = build_pipeline(config, self.clients, self.limiter)
        # Forwarded grants pass the same per-IP and global limits (README: How a request travels, dispatch).
        self.passthrough_checks: tuple[Check, ...] = request_limits(config, self.limiter)
        self.passthrough_headers = config.passthrough.allowed_headers
        self.jwks_document = json.dumps(
            {"keys": [key.public_jwk() for key in self.gateway_keys]}, separators=(",", ":")
        ).encode()

    def _add_client(
        self,
        client: Client,
        at: str,
        profile_algs: frozenset[str],
        signer: SigningKey | None,
        token_url: str,
        source: str,
    ) -> None:
        config = self.config
        algorithms = frozenset(client.algorithms) if client.algorithms is not None else profile_algs
        loaded = load_client_keys(client, at, algorithms, source)
        if isinstance(loaded, KeySet):
            problem = usable_algorithms_problem(loaded, algorithms, at)
            if problem is not None:
                raise ConfigError(source, [problem])
        keys, remote = (loaded, None) if isinstance(loaded, KeySet) else (None, self._remote_jwks(client, loaded, at))
        auth = client.upstream.client_auth
        auth_key = self._client_auth_key(client, at, signer, source)
        injected = InjectedAuth(auth, client.client_id, token_url, auth_key, config.gateway.issuer)
        builder = UpstreamRequestBuilder(client.upstream, injected, config.gateway.issuer, signer)
        upstream = self.upstream
        if auth.method == "tls_client_auth":
            assert auth.cert_file is not None and auth.key_file is not None
            upstream = self._upstream_for_cert(str(auth.cert_file), str(auth.key_file), source, at)
        if auth.method != "none":
            metrics().upstream_credential_rejections.labels(client.client_id)  # present at 0 from the start
        self.clients[client.client_id] = ClientRuntime(client, algorithms, keys, remote, builder, upstream)

    def _remote_jwks(self, client: Client, settings: RemoteJWKSSettings, at: str) -> RemoteJWKS:
        counter = metrics().jwks_fetches
        client_id = client.client_id
        for outcome in ("ok", "error"):
            counter.labels(client_id, outcome)  # present at 0 from the start, for increase()
        remote = RemoteJWKS(
            settings, source=f"{at}.keys.jwks_uri", on_fetch=lambda outcome: counter.labels(client_id, outcome).inc()
        )
        self._remote.append(remote)
        return remote

    def _client_auth_key(self, client: Client, at: str, signer: SigningKey | None, source: str) -> SigningKey | None:
        auth = client.upstream.client_auth
        if auth.method != "private_key_jwt":
            return None
        if auth.use_gateway_key:
            return signer
        assert auth.private_key_file is not None and auth.alg is not None
        try:
            return load_signing_key(
                _read(auth.private_key_file, source, f"{at}.upstream.client_auth.private_key_file"),
                alg=auth.alg,
                kid=auth.kid or client.client_id,
                source=str(auth.private_key_file),
            )
        except KeyLoadError as exc:
            raise ConfigError(source, [(f"{at}.upstream.client_auth.private_key_file", str(exc))]) from None

    def _upstream_for_cert(self, cert: str, key: str, source: str, at: str) -> UpstreamClient:
        # One pooled session per client certificate: a TLS connection is bound to the certificate it presented.
        if (cert, key) not in self._upstreams:
            import ssl

            try:
                ssl.create_default_context().load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    source, [(f"{at}.upstream.client_auth", f"cannot load certificate/key: {exc}")]
                ) from None
            self._upstreams[(cert, key)] = UpstreamClient(
                self.config.upstream,
                cert_file=cert,
                key_file=key,
                in_flight=self.upstream.in_flight,
                breaker=self.upstream.breaker,
            )
        return self._upstreams[(cert, key)]

    async def start(self) -> None:
        await self.upstream.start()
        await self.passthrough_upstream.start()
        for upstream in self._upstreams.values():
            await upstream.start()
        self._jwks_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        # Concurrently: an unreachable JWKS server costs startup one timeout, not one per client.
        await asyncio.gather(*(remote.start(self._jwks_session) for remote in self._remote))

    async def close(self, *, keep_state: bool = False) -> None:
        for remote in self._remote:
            await remote.close()
        if getattr(self, "_jwks_session", None) is not None:
            await self._jwks_session.close()
        await self.upstream.close()
        await self.passthrough_upstream.close()
        for upstream in self._upstreams.values():
            await upstream.close()
        if not keep_state:
            await self.state.close()
