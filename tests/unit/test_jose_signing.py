"""Signing keys: generate/load per algorithm, the binding rules, and CAMARA assertion minting."""

from __future__ import annotations

import base64
import json
import time
import uuid
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.jose.jws import parse_compact
from gateway.jose.keys import KeyLoadError, keys_from_jwks
from gateway.jose.signing import (
    SigningKey,
    generate_private_key_pem,
    load_signing_key,
    mint_assertion,
)

ALGS = ["RS256", "PS256", "ES256", "EdDSA"]
CAPS = {"max_header_bytes": 1024, "max_payload_bytes": 4096}


@cache
def pem_for(alg: str) -> bytes:
    return generate_private_key_pem(alg)


def key_for(alg: str, kid: str = "gw-1") -> SigningKey:
    return load_signing_key(pem_for(alg), alg=alg, kid=kid, source="gateway.keys[0]")


def to_pem(key: Any, encryption: Any = None) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )


def raw_segments(value: str) -> tuple[bytes, bytes]:
    header, payload, _ = value.split(".")
    return (
        base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)),
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
    )


@pytest.mark.parametrize("alg", ALGS)
def test_generate_then_load_round_trip(alg: str) -> None:
    pem = pem_for(alg)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    key = key_for(alg)
    assert (key.kid, key.alg) == ("gw-1", alg)
    value = key.sign({"iss": "https://gateway.example.com"})
    jws = parse_compact(value, **CAPS)
    assert key.verification_key().verify(jws.signing_input, jws.signature)
    published = keys_from_jwks({"keys": [key.public_jwk()]}, source="jwks")[0]
    assert (published.kid, published.alg) == ("gw-1", alg)
    assert published.verify(jws.signing_input, jws.signature)


def test_generated_key_types_and_sizes() -> None:
    rsa_key = serialization.load_pem_private_key(pem_for("RS256"), password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size >= 2048
    ec_key = serialization.load_pem_private_key(pem_for("ES256"), password=None)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ec_key.curve, ec.SECP256R1)
    ed_key = serialization.load_pem_private_key(pem_for("EdDSA"), password=None)
    assert isinstance(ed_key, ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384", "Ed25519"])
def test_generate_refuses_other_algorithms(alg: str) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        generate_private_key_pem(alg)


def test_public_jwk_has_kid_alg_use_and_no_private_member() -> None:
    jwk = key_for("ES256").public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["crv"]) == ("gw-1", "ES256", "sig", "P-256")


@pytest.mark.parametrize(
    ("pem", "alg", "message"),
    [
        (lambda: pem_for("ES256"), "RS256", "RS256 needs an RSA key, got EC P-256 key"),
        (lambda: pem_for("RS256"), "ES256", "ES256 needs an EC P-256 key, got RSA-2048 key"),
        (lambda: pem_for("EdDSA"), "ES256", "ES256 needs an EC P-256 key, got Ed25519 key"),
        (lambda: pem_for("ES256"), "EdDSA", "EdDSA needs an Ed25519 key, got EC P-256 key"),
        (
            lambda: to_pem(rsa.generate_private_key(65537, 1024)),
            "RS256",
            "RSA key is 1024 bits, at least 2048 required",
        ),
        (
            lambda: to_pem(ec.generate_private_key(ec.SECP384R1())),
            "ES256",
            "ES256 needs an EC P-256 key, got EC P-384 key",
        ),
        (
            lambda: to_pem(ed448.Ed448PrivateKey.generate()),
            "EdDSA",
            "Ed448 key cannot sign EdDSA",
        ),
        (lambda: pem_for("ES256"), "HS256", "alg 'HS256' is not allowed"),
        (lambda: pem_for("ES256"), "ES384", "alg 'ES384' is not allowed"),
        (lambda: b"garbage", "ES256", "not a PEM private key"),
        (
            lambda: to_pem(
                ec.generate_private_key(ec.SECP256R1()),
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "ES256",
            "encrypted private keys are not supported",
        ),
    ],
)
def test_load_signing_key_refuses_mismatches(pem: Any, alg: str, message: str) -> None:
    with pytest.raises(KeyLoadError) as info:
        load_signing_key(pem(), alg=alg, kid="gw-1", source="gateway.keys[0] /etc/gw.pem")
    assert str(info.value).startswith(f"gateway.keys[0] /etc/gw.pem: {message}")


def test_load_signing_key_needs_a_kid() -> None:
    with pytest.raises(KeyLoadError, match="needs a non-empty kid"):
        load_signing_key(pem_for("ES256"), alg="ES256", kid="", source="s")


def test_sign_header_and_compact_json() -> None:
    key = key_for("ES256")
    value = key.sign({"b": 1, "a": "x"})
    header, payload = raw_segments(value)
    assert header == b'{"alg":"ES256","kid":"gw-1","typ":"JWT"}'
    assert payload == b'{"b":1,"a":"x"}'


def test_sign_typ_and_extra_header() -> None:
    key = key_for("EdDSA")
    header, _ = raw_segments(key.sign({}, typ=None))
    assert json.loads(header) == {"alg": "EdDSA", "kid": "gw-1"}
    header, _ = raw_segments(key.sign({}, typ="client-authentication+jwt", extra_header={"x": 1}))
    assert json.loads(header) == {
        "alg": "EdDSA",
        "kid": "gw-1",
        "typ": "client-authentication+jwt",
        "x": 1,
    }


@pytest.mark.parametrize("name", ["alg", "kid", "typ"])
def test_extra_header_cannot_override_the_binding(name: str) -> None:
    with pytest.raises(ValueError, match=f"extra_header may not set {name}"):
        key_for("ES256").sign({}, extra_header={name: "none"})


def test_sign_refuses_nan() -> None:
    with pytest.raises(ValueError):
        key_for("ES256").sign({"x": float("nan")})


def test_non_ascii_claims_are_escaped_and_survive() -> None:
    value = key_for("ES256").sign({"name": "Zoë"})
    _, payload = raw_segments(value)
    assert payload == b'{"name":"Zo\\u00eb"}'
    assert parse_compact(value, **CAPS).payload == {"name": "Zoë"}


@pytest.mark.parametrize("alg", ALGS)
def test_mint_assertion_claims(alg: str) -> None:
    key = key_for(alg)
    value = mint_assertion(
        key,
        iss="acme-app",
        sub="tel:+34600000000",
        aud="https://gateway.example.com/oauth2/token",
        scope="dpv:FraudPreventionAndDetection sim-swap",
        lifetime=120,
        now=1_700_000_000,
        jti="fixed-jti",
    )
    jws = parse_compact(value, **CAPS)
    assert jws.header == {"alg": alg, "kid": "gw-1", "typ": "JWT"}
    assert jws.payload == {
        "iss": "acme-app",
        "sub": "tel:+34600000000",
        "aud": "https://gateway.example.com/oauth2/token",
        "iat": 1_700_000_000,
        "exp": 1_700_000_120,
        "jti": "fixed-jti",
        "scope": "dpv:FraudPreventionAndDetection sim-swap",
    }
    assert key.verification_key().verify(jws.signing_input, jws.signature)


def test_mint_assertion_defaults() -> None:
    before = int(time.time())
    value = mint_assertion(key_for("ES256"), iss="a", sub="operatortoken:x", aud="u", scope=None)
    after = int(time.time())
    claims = parse_compact(value, **CAPS).payload
    assert "scope" not in claims
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == 300  # the CAMARA maximum lifetime
    assert uuid.UUID(claims["jti"]).version == 4
    again = mint_assertion(key_for("ES256"), iss="a", sub="operatortoken:x", aud="u", scope=None)
    assert parse_compact(again, **CAPS).payload["jti"] != claims["jti"]


def test_mint_assertion_extra_claims() -> None:
    value = mint_assertion(
        key_for("ES256"),
        iss="a",
        sub="tel:+1",
        aud="u",
        scope="s",
        now=100,
        extra_claims={"nbf": 100, "acr": "1"},
    )
    claims = parse_compact(value, **CAPS).payload
    assert claims["nbf"] == 100
    assert claims["acr"] == "1"
    assert claims["iss"] == "a"


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "iat", "exp", "jti", "scope"])
def test_mint_assertion_extra_claims_cannot_override(name: str) -> None:
    with pytest.raises(ValueError, match=f"extra_claims may not set {name}"):
        mint_assertion(key_for("ES256"), iss="a", sub="b", aud="c", scope=None, extra_claims={name: "x"})


def test_signing_key_repr_hides_the_private_key() -> None:
    text = repr(key_for("RS256"))
    assert text == "SigningKey(kid='gw-1', alg='RS256')"
