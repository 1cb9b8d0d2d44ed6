"""Cross-key rules a single field cannot express: each problem is reported with its key path.

One function per section; single-key bounds (a positive TTL, a port range) belong in model.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.config.model import Client, ClientAuth, GatewayConfig, TLSFiles
from gateway.jose.keys import ALGORITHM_NAMES

Problem = tuple[str, str]  # (key path, message)


def _file_problem(path: Path | None, key: str) -> list[Problem]:
    if path is not None and not path.is_file():
        return [(key, f"file {path} does not exist or is not a regular file")]
    return []


def _state(config: GatewayConfig) -> list[Problem]:
    if config.workers > 1 and config.state.backend == "memory":
        return [
            (
                "state.backend",
                f"workers: {config.workers} needs 'redis' (per-process replay state would let "
                "a jti be replayed on another worker), got 'memory'",
            )
        ]
    return []


def _profile(config: GatewayConfig) -> list[Problem]:
    if config.clients and not config.profile.audiences:
        return [
            (
                "profile.audiences",
                "expected at least one accepted audience (the token URL callers put in aud) "
                "when clients are configured",
            )
        ]
    return []


def _ports(config: GatewayConfig) -> list[Problem]:
    listen, admin = config.listen, config.admin
    wildcard = ("0.0.0.0", "::", "")
    same_host = listen.host == admin.host or listen.host in wildcard or admin.host in wildcard
    if listen.port != 0 and listen.port == admin.port and same_host:
        return [
            (
                "admin.port",
                f"expected a port other than listen.port ({listen.port}): the token and admin listeners "
                "cannot share an address",
            )
        ]
    return []


def _tls_files(tls: TLSFiles | None, at: str) -> list[Problem]:
    if tls is None:
        return []
    problems = _file_problem(tls.cert_file, f"{at}.cert_file") + _file_problem(tls.key_file, f"{at}.key_file")
    problems += _file_problem(tls.client_ca_file, f"{at}.client_ca_file")
    if tls.ciphers is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).set_ciphers(tls.ciphers)
        except ssl.SSLError:
            expected = "expected an OpenSSL cipher list naming ciphers it knows"
            problems.append((f"{at}.ciphers", f"{expected}, got {tls.ciphers!r}"))
    return problems


def _listen(config: GatewayConfig) -> list[Problem]:
    return _tls_files(config.listen.tls, "listen.tls") + _tls_files(config.admin.tls, "admin.tls")


def _upstream(config: GatewayConfig) -> list[Problem]:
    return _file_problem(config.upstream.tls.ca_file, "upstream.tls.ca_file")


def _gateway_keys(config: GatewayConfig) -> list[Problem]:
    problems: list[Problem] = []
    for i, key in enumerate(config.gateway.keys):
        problems += _file_problem(key.private_key_file, f"gateway.keys[{i}].private_key_file")
    return problems


def _client_algorithms(config: GatewayConfig, client: Client, at: str) -> list[Problem]:
    allowed = set(config.profile.algorithms)
    if client.algorithms is None:
        return []
    extra = [alg for alg in client.algorithms if alg not in allowed]
    if extra or not client.algorithms:
        return [
            (
                f"{at}.algorithms",
                f"expected a non-empty subset of profile.algorithms {sorted(allowed)}, got {list(client.algorithms)}",
            )
        ]
    return []


def _client_keys(config: GatewayConfig, client: Client, at: str) -> list[Problem]:
    problems = _file_problem(client.keys.jwks_file, f"{at}.keys.jwks_file")
    for j, pem in enumerate(client.keys.pem or ()):
        problems += _file_problem(pem.file, f"{at}.keys.pem[{j}].file")
    return problems


def _client_upstream_mode(config: GatewayConfig, client: Client, at: str) -> list[Problem]:
    upstream = client.upstream
    if upstream.mode != "resign":
        return []
    problems: list[Problem] = []
    if upstream.client_auth.method == "none":
        problems.append(
            (
                f"{at}.upstream.client_auth.method",
                "'resign' needs client authentication: the re-issued assertion's iss is the gateway, "
                "so without it the AS cannot tell which client asks; got 'none'",
            )
        )
    if not config.gateway.keys:
        problems.append((f"{at}.upstream.mode", "'resign' needs gateway.keys to sign with, and none are configured"))
    if not upstream.audience:
        problems.append((f"{at}.upstream.audience", "'resign' needs the AS audience (its issuer or token URL)"))
    return problems


def _private_key_jwt(config: GatewayConfig, auth: ClientAuth, auth_at: str) -> list[Problem]:
    problems: list[Problem] = []
    if auth.private_key_file is None and not auth.use_gateway_key:
        problems.append(
            (f"{auth_at}.private_key_file", "method private_key_jwt needs private_key_file or use_gateway_key: true")
        )
    if auth.private_key_file is not None and auth.use_gateway_key:
        problems.append((f"{auth_at}.use_gateway_key", "give either private_key_file or use_gateway_key, not both"))
    if auth.use_gateway_key and not config.gateway.keys:
        problems.append((f"{auth_at}.use_gateway_key", "needs gateway.keys, and none are configured"))
    if auth.assertion_issuer == "gateway" and not auth.use_gateway_key:
        problems.append(
            (
                f"{auth_at}.assertion_issuer",
                "'gateway' needs use_gateway_key: true (the gateway's key signs what the gateway issues)",
            )
        )
    if auth.private_key_file is not None and auth.alg is None:
        problems.append((f"{auth_at}.alg", f"private_key_file needs alg ({', '.join(ALGORITHM_NAMES)})"))
    problems += _file_problem(auth.private_key_file, f"{auth_at}.private_key_file")
    if auth.secret is not None:
        problems.append((f"{auth_at}.secret", "private_key_jwt does not use a secret"))
    return problems


def _tls_client_auth(config: GatewayConfig, auth: ClientAuth, auth_at: str) -> list[Problem]:
    problems: list[Problem] = []
    if auth.cert_file is None or auth.key_file is None:
        problems.append((auth_at, "method tls_client_auth needs cert_file and key_file"))
    if config.upstream.token_url.scheme != "https":
        # RFC 8705 §2: the certificate is presented in the TLS handshake; plain HTTP would drop it.
        problems.append((auth_at, "method tls_client_auth needs an https upstream.token_url"))
    problems += _file_problem(auth.cert_file, f"{auth_at}.cert_file")
    problems += _file_problem(auth.key_file, f"{auth_at}.key_file")
    return problems


def _client_auth(config: GatewayConfig, client: Client, at: str) -> list[Problem]:
    auth = client.upstream.client_auth
    method = auth.method
    auth_at = f"{at}.upstream.client_auth"
    if method in ("client_secret_basic", "client_secret_post") and auth.secret is None:
        return [(f"{auth_at}.secret", f"method {method} needs a secret reference (${{ENV}} or {{file: path}})")]
    if method == "private_key_jwt":
        return _private_key_jwt(config, auth, auth_at)
    if method == "tls_client_auth":
        return _tls_client_auth(config, auth, auth_at)
    return []


# The rules for one clients[] entry, in the order their problems are reported.
_CLIENT_RULES: tuple[Callable[[GatewayConfig, Client, str], list[Problem]], ...] = (
    _client_algorithms,
    _client_keys,
    _client_upstream_mode,
    _client_auth,
)


def _clients(config: GatewayConfig) -> list[Problem]:
    return [
        problem
        for i, client in enumerate(config.clients)
        for rule in _CLIENT_RULES
        for problem in rule(config, client, f"clients[{i}]")
    ]


# One rule per section, in the order their problems are reported.
SECTION_RULES: tuple[Callable[[GatewayConfig], list[Problem]], ...] = (
    _state,
    _profile,
    _ports,
    _listen,
    _upstream,
    _gateway_keys,
    _clients,
)


def check_consistency(config: GatewayConfig) -> list[Problem]:
    """Return (key path, message) for every inconsistency; empty when the file is coherent."""
    return [problem for rule in SECTION_RULES for problem in rule(config)]


def config_warnings(config: GatewayConfig) -> list[Problem]:
    """What works but is probably not meant: printed by check-config and logged at start, not refused."""
    warnings: list[Problem] = []
    if config.gateway.issuer.endswith("/"):
        warnings.append(
            (
                "gateway.issuer",
                f"ends with '/' ({config.gateway.issuer!r}): the AS compares issuers as exact strings, "
                "and its identity provider is usually configured without the trailing slash",
            )
        )
    if config.passthrough.other_grants == "forward" and config.passthrough.headers is None:
        warnings.append(
            (
                "passthrough.other_grants",
                "'forward' sends other grants to the AS unverified with the built-in header allow-list; "
                "list the headers your AS needs in passthrough.headers, or set other_grants: deny",
            )
        )
    for i, client in enumerate(config.clients):
        uri = client.keys.jwks_uri
        if uri is not None and uri.scheme == "http":
            warnings.append(
                (
                    f"clients[{i}].keys.jwks_uri",
                    "plain http: anyone on the path can swap the client's keys; use https",
                )
            )
    return warnings
