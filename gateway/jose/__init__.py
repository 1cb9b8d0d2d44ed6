"""JOSE for the gateway: strict compact JWS parsing, algorithm-bound keys, signing, remote JWKS."""

from gateway.jose.jws import CompactJWS, JWSFormatError, b64url_encode, parse_compact
from gateway.jose.keys import (
    ALGORITHMS,
    KeyLoadError,
    KeySet,
    VerificationKey,
    key_from_pem,
    keys_from_jwks,
)
from gateway.jose.signing import (
    SigningKey,
    generate_private_key_pem,
    load_signing_key,
    mint_assertion,
)

__all__ = [
    "ALGORITHMS",
    "CompactJWS",
    "JWSFormatError",
    "KeyLoadError",
    "KeySet",
    "SigningKey",
    "VerificationKey",
    "b64url_encode",
    "generate_private_key_pem",
    "key_from_pem",
    "keys_from_jwks",
    "load_signing_key",
    "mint_assertion",
    "parse_compact",
]
