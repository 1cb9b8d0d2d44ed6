"""Cross-key rules a single field cannot express: each problem is reported with its key path."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import GatewayConfig
from gateway.jose.keys import ALGORITHM_NAMES


def _file_problem(path: Path | None, key: str) -> list[tuple[str, str]]:
    if path is not None and not path.is_file():
        return [(key, f"file {path} does not exist or is not a regular file")]
    return []


def check_consistency(config: GatewayConfig) -> list[tuple[str, str]]:
    """Return (key path, message) for every inconsistency; empty when the file is coherent."""
    problems: list[tuple[str, str]] = []
    if config.workers > 1 and config.state.backend == "memory":
        problems.append(
            (
                "state.backend",
                f"workers: {config.workers} needs 'redis' (per-process replay state would let "
                "a jti be replayed on another worker), got 'memory'",
            )
        )
    if config.clients and not config.profile.audiences:
        problems.append(
            (
                "profile.audiences",
                "expected at least one accepted audience (the token URL callers put in aud) "
                "when clients are configured",
            )
        )
    if config.listen.tls:
        problems += _file_problem(config.listen.tls.cert_file, "listen.tls.cert_file")
        problems += _file_problem(config.listen.tls.key_file, "listen.tls.key_file")
    problems += _file_problem(config.upstream.tls.ca_file, "upstream.tls.ca_file")
    for i, key in enumerate(config.gateway.keys):
        problems += _file_problem(key.private_key_file, f"gateway.keys[{i}].private_key_file")

    allowed = set(config.profile.algorithms)
    for i, client in enumerate(config.clients):
        at = f"clients[{i}]"
        if client.algorithms is not None:
            extra = [alg for alg in client.algorithms if alg not in allowed]
            if extra or not client.algorithms:
                problems.append(
                    (
                        f"{at}.algorithms",
                        f"expected a non-empty subset of profile.algorithms {sorted(allowed)}, "
                        f"got {list(client.algorithms)}",
                    )
                )
        problems += _file_problem(client.keys.jwks_file, f"{at}.keys.jwks_file")
        for j, pem in enumerate(client.keys.pem or ()):
            problems += _file_problem(pem.file, f"{at}.keys.pem[{j}].file")
        upstream = client.upstream
        if upstream.mode == "resign":
            if upstream.client_auth.method == "none":
                problems.append(
                    (
                        f"{at}.upstream.client_auth.method",
                        "'resign' needs client authentication: the re-issued assertion's iss is the gateway, "
                        "so without it the AS cannot tell which client asks; got 'none'",
                    )
                )
            if not config.gateway.keys:
                problems.append(
                    (f"{at}.upstream.mode", "'resign' needs gateway.keys to sign with, and none are configured")
                )
            if not upstream.audience:
                problems.append((f"{at}.upstream.audience", "'resign' needs the AS audience (its issuer or token URL)"))
        auth = upstream.client_auth
        method = auth.method
        auth_at = f"{at}.upstream.client_auth"
        if method in ("client_secret_basic", "client_secret_post") and auth.secret is None:
            problems.append(
                (f"{auth_at}.secret", f"method {method} needs a secret reference (${{ENV}} or {{file: path}})")
            )
        if method == "private_key_jwt":
            if auth.private_key_file is None and not auth.use_gateway_key:
                problems.append(
                    (
                        f"{auth_at}.private_key_file",
                        "method private_key_jwt needs private_key_file or use_gateway_key: true",
                    )
                )
            if auth.private_key_file is not None and auth.use_gateway_key:
                problems.append(
                    (f"{auth_at}.use_gateway_key", "give either private_key_file or use_gateway_key, not both")
                )
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
        if method == "tls_client_auth":
            if auth.cert_file is None or auth.key_file is None:
                problems.append((auth_at, "method tls_client_auth needs cert_file and key_file"))
            if config.upstream.token_url.scheme != "https":
                # RFC 8705 §2: the certificate is presented in the TLS handshake; plain HTTP would drop it.
                problems.append((auth_at, "method tls_client_auth needs an https upstream.token_url"))
            problems += _file_problem(auth.cert_file, f"{auth_at}.cert_file")
            problems += _file_problem(auth.key_file, f"{auth_at}.key_file")
        if method != "none" and method != "tls_client_auth" and auth.secret is not None and method == "private_key_jwt":
            problems.append((f"{auth_at}.secret", "private_key_jwt does not use a secret"))
    return problems
