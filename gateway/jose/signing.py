"""Signing keys and compact JWS signing: re-issued assertions, client assertions, test tokens."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm

from gateway.jose.jws import b64url_encode
from gateway.jose.keys import (
    ALGORITHM_OBJECTS,
    ALGORITHMS,
    RSA_ALGORITHMS,
    KeyLoadError,
    VerificationKey,
    describe_key,
    infer_alg,
)

__all__ = [
    "PrivateKey",
    "SigningKey",
    "assertion_claims",
    "generate_private_key_pem",
    "load_signing_key",
    "mint_assertion",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)

# Set from the SigningKey and the typ argument; extra_header must not override them.
_RESERVED_HEADER = frozenset({"alg", "kid", "typ"})
# Set by mint_assertion itself (RFC 7523 §3 and the CAMARA profile).
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "scope"})


def _json_b64(value: Mapping[str, Any]) -> str:
    # Compact, ASCII-only, and never NaN/Infinity (RFC 8259 §6).
    return b64url_encode(json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii"))


@dataclass(frozen=True, slots=True, eq=False)
class SigningKey:
    """A private key bound to one kid and one algorithm (RFC 8725 §3.1)."""

    kid: str
    alg: str
    key: PrivateKey = field(repr=False)
    _algorithm: Algorithm = field(init=False, repr=False)
    _verification_key: VerificationKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, _PRIVATE_KEY_TYPES):
            raise KeyLoadError(f"{describe_key(self.key)} is not a usable private key")
        # VerificationKey applies the same alg/key-type/size rules as for client keys.
        verification_key = VerificationKey(self.kid, self.alg, self.key.public_key())
        object.__setattr__(self, "_algorithm", ALGORITHM_OBJECTS[self.alg])
        object.__setattr__(self, "_verification_key", verification_key)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        typ: str | None = "JWT",
        extra_header: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign `claims` as a compact JWS with header {"alg", "kid", "typ"}."""
        header: dict[str, Any] = {"alg": self.alg, "kid": self.kid}
        if typ is not None:
            header["typ"] = typ  # RFC 7519 §5.1
        if extra_header:
            clash = _RESERVED_HEADER.intersection(extra_header)
            if clash:
                raise ValueError(f"extra_header may not set {', '.join(sorted(clash))}")
            header.update(extra_header)
        signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
        signature = self._algorithm.sign(signing_input.encode("ascii"), self.key)
        return f"{signing_input}.{b64url_encode(signature)}"

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with kid, alg and use="sig"."""
        return self._verification_key.public_jwk()

    def verification_key(self) -> VerificationKey:
        """The matching public key, ready to verify."""
        return self._verification_key


def load_signing_key(pem: bytes, *, alg: str | None, kid: str, source: str) -> SigningKey:
    """Load an unencrypted PEM private key for `alg`; KeyLoadError naming `source` otherwise.

    `alg` None binds the key by its type as for a public key (an RSA key signs RS256)."""
    if alg is not None and alg not in ALGORITHMS:
        raise KeyLoadError(f"{source}: alg {alg!r} is not allowed (allowed: {', '.join(sorted(ALGORITHMS))})")
    if not kid:
        raise KeyLoadError(f"{source}: a signing key needs a non-empty kid")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # cryptography raises TypeError when the PEM is encrypted and no password is given.
        raise KeyLoadError(f"{source}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyLoadError(f"{source}: not a PEM private key") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise KeyLoadError(f"{source}: {describe_key(key)} cannot sign {alg or 'any allowed algorithm'}")
    try:
        return SigningKey(kid, alg if alg is not None else infer_alg(key.public_key(), "RS256"), key)
    except KeyLoadError as exc:
        raise KeyLoadError(f"{source}: {exc}") from None


def generate_private_key_pem(alg: str) -> bytes:
    """A fresh unencrypted PKCS#8 PEM private key for `alg`."""
    key: PrivateKey
    if alg in RSA_ALGORITHMS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"alg {alg!r} is not allowed (allowed: {', '.join(sorted(ALGORITHMS))})")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def assertion_claims(
    *, iss: str, sub: str | None, aud: str, lifetime: int, now: int | None = None, jti: str | None = None
) -> dict[str, Any]:
    """The RFC 7523 §3 claim set every assertion the gateway signs starts from: iss, sub, aud, iat,
    exp = iat + `lifetime`, and a fresh jti (item 7: unique) unless one is given. `sub` None leaves it out."""
    issued_at = int(time.time()) if now is None else now
    claims: dict[str, Any] = {"iss": iss}
    if sub is not None:
        claims["sub"] = sub
    claims.update(
        aud=aud, iat=issued_at, exp=issued_at + lifetime, jti=jti if jti is not None else uuid.uuid4().hex
    )
    return claims


def mint_assertion(
    key: SigningKey,
    *,
    iss: str,
    sub: str,
    aud: str,
    scope: str | None,
    lifetime: int = 300,
    now: int | None = None,
    jti: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed CAMARA JWT-bearer assertion (RFC 7523 §3): iss, sub, aud, iat, exp, jti, scope."""
    claims = assertion_claims(iss=iss, sub=sub, aud=aud, lifetime=lifetime, now=now, jti=jti)
    if scope is not None:
        claims["scope"] = scope
    if extra_claims:
        clash = _RESERVED_CLAIMS.intersection(extra_claims)
        if clash:
            raise ValueError(f"extra_claims may not set {', '.join(sorted(clash))}")
        claims.update(extra_claims)
    return key.sign(claims)
