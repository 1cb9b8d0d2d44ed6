"""Client verification keys: parsed once, each bound to one algorithm (RFC 8725 §3.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm
from jwt.exceptions import InvalidKeyError

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_NAMES",
    "ALGORITHM_OBJECTS",
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "AlgorithmName",
    "KeyLoadError",
    "KeySet",
    "PublicKey",
    "VerificationKey",
    "binding_problem",
    "describe_key",
    "infer_alg",
    "key_from_pem",
    "keys_from_jwks",
]

# RFC 8725 §3.1-3.2 and FAPI 2.0: the only algorithms the gateway can ever verify or sign.
# Asymmetric only: never "none", never HS*. The one list: the config model, the CLI and the
# checks take it from here.
AlgorithmName = Literal["RS256", "PS256", "ES256", "EdDSA"]
ALGORITHM_NAMES: tuple[AlgorithmName, ...] = get_args(AlgorithmName)
ALGORITHMS: frozenset[str] = frozenset(ALGORITHM_NAMES)
RSA_ALGORITHMS: frozenset[str] = frozenset({"RS256", "PS256"})
MIN_RSA_BITS = 2048  # FAPI 2.0 Security Profile (cryptography and secrets); NIST SP 800-131A

# PyJWT algorithm objects, built once at import; stateless, shared by every key.
ALGORITHM_OBJECTS: Mapping[str, Algorithm] = MappingProxyType(
    {
        "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
        "PS256": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256),
        "ES256": ECAlgorithm(ECAlgorithm.SHA256, ec.SECP256R1),
        "EdDSA": OKPAlgorithm(),
    }
)

# RFC 7518 §6.2.2, §6.3.2, §6.4 and RFC 8037 §2: members that only a private or
# symmetric key carries.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# kty -> (PyJWT parser, members that must be strings before it sees them).
_JWK_PARSERS: dict[str, tuple[Callable[[dict[str, Any]], object], tuple[str, ...]]] = {
    "RSA": (RSAAlgorithm.from_jwk, ("n", "e")),
    "EC": (ECAlgorithm.from_jwk, ("crv", "x", "y")),
    "OKP": (OKPAlgorithm.from_jwk, ("crv", "x")),
}

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class KeyLoadError(ValueError):
    """A key that cannot be used; the message names its source and the reason."""


def describe_key(key: object) -> str:
    """A short, material-free description such as "RSA-2048 key" or "EC P-384 key"."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size} key"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448 key"
    return type(key).__name__


def binding_problem(alg: str, key: object) -> str | None:
    """Why `key` cannot be used with `alg`, or None when it fits."""
    if alg not in ALGORITHMS:
        return f"alg {alg!r} is not allowed (allowed: {', '.join(sorted(ALGORITHMS))})"
    if alg in RSA_ALGORITHMS:
        if not isinstance(key, rsa.RSAPublicKey):
            return f"{alg} needs an RSA key, got {describe_key(key)}"
        if key.key_size < MIN_RSA_BITS:
            return f"RSA key is {key.key_size} bits, at least {MIN_RSA_BITS} required"
    elif alg == "ES256":
        # RFC 7518 §3.4: ES256 is ECDSA on P-256 only.
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            return f"ES256 needs an EC P-256 key, got {describe_key(key)}"
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        # RFC 8037 §3.1 also allows Ed448; the gateway accepts Ed25519 only.
        return f"EdDSA needs an Ed25519 key, got {describe_key(key)}"
    return None


def _signature_length(key: PublicKey) -> int:
    if isinstance(key, rsa.RSAPublicKey):
        return (key.key_size + 7) // 8  # RFC 8017 §8.2.2 step 1
    return 64  # RFC 7518 §3.4 (R || S, 32 bytes each) and RFC 8032 §5.1.6


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """A public key bound to exactly one algorithm, ready to verify."""

    kid: str | None
    alg: str
    key: PublicKey = field(repr=False)
    _algorithm: Algorithm = field(init=False, repr=False)
    _signature_length: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        problem = binding_problem(self.alg, self.key)
        if problem is not None:
            raise KeyLoadError(problem)
        object.__setattr__(self, "_algorithm", ALGORITHM_OBJECTS[self.alg])
        object.__setattr__(self, "_signature_length", _signature_length(self.key))

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """True only for a valid signature; never raises on hostile bytes."""
        if len(signature) != self._signature_length:
            return False
        try:
            return self._algorithm.verify(signing_input, self.key, signature)
        except Exception:
            # Attacker-controlled bytes must yield False, never a 5xx.
            return False

    def public_jwk(self) -> dict[str, Any]:
        """The key as a public JWK with kid, alg and use="sig"."""
        jwk: dict[str, Any] = self._algorithm.to_jwk(self.key, as_dict=True)
        # RFC 7517 §4.3: "use" and "key_ops" should not be used together.
        jwk.pop("key_ops", None)
        if self.kid is not None:
            jwk["kid"] = self.kid
        jwk["alg"] = self.alg
        jwk["use"] = "sig"
        return jwk


def infer_alg(key: object, default_alg: str | None) -> str:
    """The algorithm for a public key without an explicit alg (RFC 8725 §3.1: bind by key type);
    RSA is ambiguous and takes `default_alg` (RS256 or PS256)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey):
        if default_alg in RSA_ALGORITHMS:
            return default_alg
        raise KeyLoadError("RSA key needs alg: RS256 or PS256")
    raise KeyLoadError(f"unsupported {describe_key(key)}")


def _bind(key: object, alg: str | None, kid: str | None, default_alg: str | None) -> VerificationKey:
    bound_alg = alg if alg is not None else infer_alg(key, default_alg)
    problem = binding_problem(bound_alg, key)
    if problem is not None:
        raise KeyLoadError(problem)
    return VerificationKey(kid, bound_alg, cast(PublicKey, key))


def _key_from_jwk(jwk: Mapping[str, Any], default_alg: str | None) -> VerificationKey:
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyLoadError("kid must be a string")  # RFC 7517 §4.5
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALGORITHMS):
        raise KeyLoadError(f"alg {alg!r} is not allowed (allowed: {', '.join(sorted(ALGORITHMS))})")
    kty = jwk.get("kty")
    parser = _JWK_PARSERS.get(kty) if isinstance(kty, str) else None
    if parser is None:
        raise KeyLoadError(f"unsupported kty {kty!r}")
    from_jwk, required = parser
    for member in required:
        if not isinstance(jwk.get(member), str):
            raise KeyLoadError(f"{kty} key needs a string {member!r}")
    try:
        key = from_jwk(dict(jwk))
    except (InvalidKeyError, ValueError, TypeError) as exc:
        raise KeyLoadError(f"invalid {kty} key: {exc}") from None
    return _bind(key, alg, kid, default_alg)


def _not_for_signatures(jwk: Mapping[str, Any]) -> bool:
    # RFC 7517 §4.2-4.3: a key published for another purpose (e.g. "enc") is skipped.
    if jwk.get("use", "sig") != "sig":
        return True
    key_ops = jwk.get("key_ops")
    return key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops)


def keys_from_jwks(jwks: Mapping[str, Any], *, source: str, default_alg: str | None = None) -> list[VerificationKey]:
    """Parse a public JWK Set (RFC 7517 §5) into verification keys; KeyLoadError if unusable."""
    if default_alg is not None and default_alg not in ALGORITHMS:
        raise KeyLoadError(f"{source}: default alg {default_alg!r} is not allowed")
    members = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(members, list):
        raise KeyLoadError(f'{source}: a JWKS must be an object with a "keys" array')
    keys: list[VerificationKey] = []
    kids: set[str] = set()
    for index, jwk in enumerate(members):
        where = f"{source}: key {index}"
        if not isinstance(jwk, Mapping):
            raise KeyLoadError(f"{where}: not a JSON object")
        private = _PRIVATE_MEMBERS.intersection(jwk)
        if private:
            # A private or symmetric key published by mistake must not be used silently,
            # whatever its "use".
            raise KeyLoadError(f"{where}: private key member(s) {', '.join(sorted(private))}")
        if _not_for_signatures(jwk):
            continue
        try:
            key = _key_from_jwk(jwk, default_alg)
        except KeyLoadError as exc:
            raise KeyLoadError(f"{where}: {exc}") from None
        if key.kid is not None:
            if key.kid in kids:
                raise KeyLoadError(f"{where}: duplicate kid {key.kid!r}")
            kids.add(key.kid)
        keys.append(key)
    return keys


def key_from_pem(
    pem: bytes, *, alg: str | None, kid: str | None, source: str, default_alg: str | None = None
) -> VerificationKey:
    """Load a public key or X.509 certificate PEM; alg None infers it as for a JWK without "alg"."""
    key: object
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        try:
            # The certificate only carries the key: the client's key is pinned, not
            # validated through a PKI, so dates and chain are not looked at.
            key = x509.load_pem_x509_certificate(pem).public_key()
        except (ValueError, UnsupportedAlgorithm):
            if b"PRIVATE KEY" in pem:
                raise KeyLoadError(f"{source}: holds a private key; give the public key or certificate") from None
            raise KeyLoadError(f"{source}: not a PEM public key or certificate") from None
    for value in (alg, default_alg):
        if value is not None and value not in ALGORITHMS:
            raise KeyLoadError(f"{source}: alg {value!r} is not allowed (allowed: {', '.join(sorted(ALGORITHMS))})")
    try:
        return _bind(key, alg, kid, default_alg)
    except KeyLoadError as exc:
        raise KeyLoadError(f"{source}: {exc}") from None


class KeySet:
    """An immutable set of verification keys with O(1) selection by kid."""

    __slots__ = ("_by_kid", "_keys", "_single")

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = tuple(keys)
        by_kid: dict[str, VerificationKey] = {}
        for key in self._keys:
            if key.kid is not None:
                if key.kid in by_kid:
                    raise KeyLoadError(f"duplicate kid {key.kid!r}")
                by_kid[key.kid] = key
        self._by_kid = by_kid
        self._single = self._keys[0] if len(self._keys) == 1 else None

    def select(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`; without a kid, the key only when the set holds exactly one."""
        # RFC 7515 §4.1.4: with several keys and no kid, trying each would multiply
        # the verification cost an attacker can make us pay, so there is no match.
        if kid is None:
            return self._single
        return self._by_kid.get(kid)

    def public_jwks(self) -> dict[str, Any]:
        """The set as a public JWKS document."""
        return {"keys": [key.public_jwk() for key in self._keys]}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys)

    def __repr__(self) -> str:
        return f"KeySet({[(key.kid, key.alg) for key in self._keys]!r})"
