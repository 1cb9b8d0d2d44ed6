"""TLS of the gateway's own listeners: protocol floor, ciphers, client certificates, and a
certificate re-read on SIGHUP into the running context (new handshakes get it; no restart)."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from gateway.config.load import ConfigError
from gateway.config.model import TLSFiles

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(tls: TLSFiles, source: str, at: str, *, client_cert_optional: bool = False) -> ssl.SSLContext:
    """The SSLContext of a listener; an unusable certificate, key or CA is a ConfigError naming `at`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[tls.min_version]
    if tls.ciphers is not None:
        context.set_ciphers(tls.ciphers)
    load_certificate(context, tls, source, at)
    if tls.client_ca_file is not None:
        optional = client_cert_optional or tls.client_auth == "optional"
        context.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    return context


def load_certificate(context: ssl.SSLContext, tls: TLSFiles, source: str, at: str) -> None:
    """(Re)load the certificate chain and client CA into `context`, checked in a scratch context
    first so that a bad file leaves the running certificate in place."""
    cert, key = str(tls.cert_file), str(tls.key_file)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(source, [(at, f"cannot load certificate {cert} with key {key}: {exc}")]) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
        except (ssl.SSLError, OSError) as exc:
            problem = (f"{at}.client_ca_file", f"cannot load CA {tls.client_ca_file}: {exc}")
            raise ConfigError(source, [problem]) from None


def not_after(path: Path) -> float | None:
    """The expiry (Unix time) of the first certificate in a PEM file, None if it cannot be read."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return certificate.not_valid_after_utc.timestamp()
