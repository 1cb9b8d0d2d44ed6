"""Verification keys: algorithm binding (RFC 8725 §3.1), JWKS and PEM loading, KeySet selection."""

from __future__ import annotations

import datetime
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.jose.jws import b64url_encode, parse_compact
from gateway.jose.keys import (
    ALGORITHMS,
    KeyLoadError,
    KeySet,
    VerificationKey,
    key_from_pem,
    keys_from_jwks,
)
from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key

ALGS = ["RS256", "PS256", "ES256", "EdDSA"]
CAPS = {"max_header_bytes": 1024, "max_payload_bytes": 4096}


def signing_key(alg: str, kid: str = "k1") -> SigningKey:
    """One generated key per (alg, kid) for the whole module: RSA generation is slow."""
    return _signing_key(alg, kid)


@cache
def _signing_key(alg: str, kid: str) -> SigningKey:
    return load_signing_key(generate_private_key_pem(alg), alg=alg, kid=kid, source="test")


@cache
def rsa_private(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def certificate_pem(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-app")])
    now = datetime.datetime.now(datetime.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def rsa_jwk(bits: int, **members: Any) -> dict[str, Any]:
    key = VerificationKey(None, "RS256", rsa_private(2048).public_key()).public_jwk()
    if bits != 2048:
        numbers = rsa_private(bits).public_key().public_numbers()
        key["n"] = b64url_encode(numbers.n.to_bytes((bits + 7) // 8, "big"))
    key.pop("alg")
    key.pop("use")
    return {**key, **members}


def ec_jwk(curve: ec.EllipticCurve, **members: Any) -> dict[str, Any]:
    numbers = ec.generate_private_key(curve).public_key().public_numbers()
    size = (curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[curve.name]
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
        **members,
    }


def load_one(jwk: dict[str, Any], default_alg: str | None = None) -> VerificationKey:
    keys = keys_from_jwks({"keys": [jwk]}, source="clients[1].keys.jwks", default_alg=default_alg)
    assert len(keys) == 1
    return keys[0]


def load_error(jwk: dict[str, Any], default_alg: str | None = None) -> str:
    with pytest.raises(KeyLoadError) as info:
        load_one(jwk, default_alg)
    message = str(info.value)
    assert message.startswith("clients[1].keys.jwks: key 0: "), message
    return message


def sign(alg: str, kid: str = "k1") -> tuple[bytes, bytes]:
    value = signing_key(alg, kid).sign({"iss": "acme", "jti": "1"})
    jws = parse_compact(value, **CAPS)
    return jws.signing_input, jws.signature


def test_the_allow_list_is_asymmetric_only() -> None:
    assert frozenset({"RS256", "PS256", "ES256", "EdDSA"}) == ALGORITHMS
    assert isinstance(ALGORITHMS, frozenset)


@pytest.mark.parametrize("alg", ALGS)
def test_sign_then_verify_through_a_public_jwks(alg: str) -> None:
    key = load_one(signing_key(alg).public_jwk())
    assert (key.kid, key.alg) == ("k1", alg)
    signing_input, signature = sign(alg)
    assert key.verify(signing_input, signature) is True


@pytest.mark.parametrize("alg", ALGS)
def test_verify_rejects_tampering_and_wrong_keys(alg: str) -> None:
    key = load_one(signing_key(alg).public_jwk())
    signing_input, signature = sign(alg)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert key.verify(signing_input, flipped) is False
    assert key.verify(signing_input + b"x", signature) is False
    assert key.verify(signing_input[:-1] + b"A", signature) is False
    other = signing_key(alg, "other").verification_key()
    assert other.verify(signing_input, signature) is False


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00", b"\x00" * 63, b"\x00" * 64, b"\xff" * 64, b"\x00" * 256, b"\xff" * 256, b"\xff" * 257],
)
def test_verify_never_raises_on_hostile_signature_bytes(alg: str, signature: bytes) -> None:
    key = signing_key(alg).verification_key()
    assert key.verify(b"e30.e30", signature) is False


def test_es256_signature_is_raw_r_s_not_der() -> None:
    key = signing_key("ES256")
    assert isinstance(key.key, ec.EllipticCurvePrivateKey)
    signing_input, signature = sign("ES256")
    assert len(signature) == 64  # RFC 7518 §3.4
    der = key.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    assert key.verification_key().verify(signing_input, der) is False


def test_rsa_key_bound_to_rs256_refuses_a_ps256_signature() -> None:
    private = signing_key("PS256")
    rs_key = VerificationKey("k1", "RS256", private.key.public_key())
    signing_input, signature = sign("PS256")
    assert rs_key.verify(signing_input, signature) is False
    assert private.verification_key().verify(signing_input, signature) is True


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # joserfc follows RFC 9864
@pytest.mark.parametrize("alg", ALGS)
def test_interoperates_with_an_independent_jose_library(alg: str) -> None:
    # joserfc (installed with Authlib) signs and verifies with its own JWS code: both directions must agree.
    from joserfc import jwk as rfc_jwk
    from joserfc import jwt as rfc_jwt

    ours = signing_key(alg)
    kty = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[alg]
    theirs = rfc_jwk.import_key(private_pem(ours.key), kty)
    value = rfc_jwt.encode({"alg": alg, "kid": "k1"}, {"iss": "acme"}, theirs, algorithms=[alg])
    jws = parse_compact(value, **CAPS)
    assert ours.verification_key().verify(jws.signing_input, jws.signature)
    decoded = rfc_jwt.decode(ours.sign({"iss": "acme"}), theirs, algorithms=[alg])
    assert decoded.claims == {"iss": "acme"}


def test_public_jwk_holds_no_private_material() -> None:
    for alg in ALGS:
        jwk = signing_key(alg).public_jwk()
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
        assert (jwk["kid"], jwk["alg"], jwk["use"]) == ("k1", alg, "sig")
        assert "key_ops" not in jwk  # RFC 7517 §4.3: not together with "use"


def test_rsa_1024_is_refused_from_a_jwks() -> None:
    message = load_error(rsa_jwk(1024, alg="RS256"))
    assert message.endswith("RSA key is 1024 bits, at least 2048 required")


def test_rsa_1024_is_refused_from_a_pem() -> None:
    with pytest.raises(KeyLoadError, match=r"^keys/old\.pem: RSA key is 1024 bits"):
        key_from_pem(public_pem(rsa_private(1024)), alg="RS256", kid=None, source="keys/old.pem")


@pytest.mark.parametrize("alg", [None, "ES256"])
def test_p384_is_refused_for_es256(alg: str | None) -> None:
    members = {"alg": alg} if alg else {}
    assert "ES256 needs an EC P-256 key, got EC P-384 key" in load_error(ec_jwk(ec.SECP384R1(), **members))


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS512", "PS384", "HS256", "none", "", 7])
def test_algorithms_outside_the_allow_list_are_refused(alg: Any) -> None:
    jwk = ec_jwk(ec.SECP256R1(), alg=alg)
    assert "is not allowed" in load_error(jwk)


def test_rsa_without_alg_needs_a_default() -> None:
    assert load_error(rsa_jwk(2048)).endswith("RSA key needs alg: RS256 or PS256")
    assert load_error(rsa_jwk(2048), default_alg="ES256").endswith("RSA key needs alg: RS256 or PS256")
    assert load_one(rsa_jwk(2048), default_alg="PS256").alg == "PS256"
    assert load_one(rsa_jwk(2048), default_alg="RS256").alg == "RS256"
    # An explicit alg wins over the default.
    assert load_one(rsa_jwk(2048, alg="RS256"), default_alg="PS256").alg == "RS256"


def test_default_alg_outside_the_allow_list_is_refused() -> None:
    with pytest.raises(KeyLoadError, match="default alg 'HS256' is not allowed"):
        keys_from_jwks({"keys": []}, source="s", default_alg="HS256")


def test_ec_and_okp_infer_their_alg() -> None:
    assert load_one(ec_jwk(ec.SECP256R1())).alg == "ES256"
    okp = signing_key("EdDSA").public_jwk()
    del okp["alg"]
    assert load_one(okp).alg == "EdDSA"


@pytest.mark.parametrize(
    ("jwk", "alg"),
    [
        (lambda: ec_jwk(ec.SECP256R1()), "RS256"),
        (lambda: ec_jwk(ec.SECP256R1()), "EdDSA"),
        (lambda: rsa_jwk(2048), "ES256"),
        (lambda: rsa_jwk(2048), "EdDSA"),
        (lambda: {**signing_key("EdDSA").public_jwk(), "kid": None}, "ES256"),
        (lambda: {**signing_key("EdDSA").public_jwk(), "kid": None}, "PS256"),
    ],
)
def test_key_type_must_fit_the_alg(jwk: Any, alg: str) -> None:
    value = {k: v for k, v in jwk().items() if v is not None}
    assert "needs an" in load_error({**value, "alg": alg})


@pytest.mark.parametrize("members", [{}, {"alg": "EdDSA"}])
def test_ed448_is_refused(members: dict[str, str]) -> None:
    raw = ed448.Ed448PrivateKey.generate().public_key().public_bytes_raw()
    jwk = {"kty": "OKP", "crv": "Ed448", "x": b64url_encode(raw), **members}
    assert load_error(jwk).endswith("EdDSA needs an Ed25519 key, got Ed448 key")


@pytest.mark.parametrize(
    "jwk",
    [
        lambda: {**rsa_jwk(2048, alg="RS256"), "d": "AQAB"},
        lambda: {**rsa_jwk(2048, alg="RS256"), "p": "AQAB", "q": "AQAB"},
        lambda: ec_jwk(ec.SECP256R1(), d=b64url_encode(b"\x01" * 32)),
        lambda: {**signing_key("EdDSA").public_jwk(), "d": b64url_encode(b"\x01" * 32)},
        lambda: {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"},
        # A private key marked for encryption is still a leak: refused, not skipped.
        lambda: ec_jwk(ec.SECP256R1(), use="enc", d=b64url_encode(b"\x01" * 32)),
    ],
)
def test_private_members_are_refused(jwk: Any) -> None:
    assert "private key member" in load_error(jwk())


def test_real_private_jwk_is_refused() -> None:
    from jwt.algorithms import ECAlgorithm

    key = signing_key("ES256").key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    private = ECAlgorithm.to_jwk(key, as_dict=True)
    assert "private key member(s) d" in load_error(private)


def test_keys_not_for_signatures_are_skipped() -> None:
    jwks = {
        "keys": [
            ec_jwk(ec.SECP256R1(), kid="enc", use="enc"),
            ec_jwk(ec.SECP256R1(), kid="wrap", key_ops=["wrapKey"]),
            ec_jwk(ec.SECP256R1(), kid="sig", use="sig"),
            ec_jwk(ec.SECP256R1(), kid="plain"),
            ec_jwk(ec.SECP256R1(), kid="ops", key_ops=["verify"]),
        ]
    }
    kids = [key.kid for key in keys_from_jwks(jwks, source="s")]
    assert kids == ["sig", "plain", "ops"]


def test_duplicate_kid_is_refused() -> None:
    jwks = {"keys": [ec_jwk(ec.SECP256R1(), kid="a"), ec_jwk(ec.SECP256R1(), kid="a")]}
    with pytest.raises(KeyLoadError, match=r"^src: key 1: duplicate kid 'a'$"):
        keys_from_jwks(jwks, source="src")


@pytest.mark.parametrize(
    "jwks",
    [{}, {"keys": {}}, {"keys": "x"}, {"keys": None}, [], "keys"],
)
def test_not_a_jwks(jwks: Any) -> None:
    with pytest.raises(KeyLoadError, match=r'^src: a JWKS must be an object with a "keys" array'):
        keys_from_jwks(jwks, source="src")


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ("string", "not a JSON object"),
        ({"kty": "EC"}, "EC key needs a string 'crv'"),
        ({"kty": "RSA", "n": 5, "e": "AQAB", "alg": "RS256"}, "RSA key needs a string 'n'"),
        ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "invalid EC key"),
        ({"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}, "invalid EC key"),
        ({"kty": "XYZ"}, "unsupported kty 'XYZ'"),
        ({}, "unsupported kty None"),
        ({"kty": "EC", "crv": "P-256", "x": "A", "y": "A", "kid": 3}, "kid must be a string"),
    ],
)
def test_invalid_jwks_members(jwk: Any, message: str) -> None:
    assert message in load_error(jwk)


def test_empty_jwks_is_an_empty_list() -> None:
    assert keys_from_jwks({"keys": []}, source="s") == []


@pytest.mark.parametrize("alg", ALGS)
def test_key_from_pem_public_key_and_certificate(alg: str) -> None:
    private = signing_key(alg)
    signing_input, signature = sign(alg)
    for pem in (public_pem(private.key), certificate_pem(private.key)):
        key = key_from_pem(pem, alg=alg, kid="k9", source="f.pem")
        assert (key.kid, key.alg) == ("k9", alg)
        assert key.verify(signing_input, signature)


def test_key_from_pem_infers_alg_like_a_jwk() -> None:
    assert key_from_pem(public_pem(signing_key("ES256").key), alg=None, kid=None, source="f").alg
    assert key_from_pem(public_pem(signing_key("EdDSA").key), alg=None, kid=None, source="f").alg
    with pytest.raises(KeyLoadError, match=r"^f: RSA key needs alg: RS256 or PS256$"):
        key_from_pem(public_pem(signing_key("RS256").key), alg=None, kid=None, source="f")
    rsa_pem = public_pem(signing_key("RS256").key)
    assert key_from_pem(rsa_pem, alg=None, kid=None, source="f", default_alg="PS256").alg == "PS256"
    # default_alg only settles RSA: an EC key still binds to ES256.
    ec_pem = public_pem(signing_key("ES256").key)
    assert key_from_pem(ec_pem, alg=None, kid=None, source="f", default_alg="RS256").alg == "ES256"


def test_key_from_pem_refuses_private_keys_and_garbage() -> None:
    with pytest.raises(KeyLoadError, match=r"^f\.pem: holds a private key"):
        key_from_pem(private_pem(signing_key("ES256").key), alg="ES256", kid=None, source="f.pem")
    with pytest.raises(KeyLoadError, match=r"^f\.pem: not a PEM public key or certificate$"):
        key_from_pem(b"hello", alg="ES256", kid=None, source="f.pem")
    with pytest.raises(KeyLoadError, match=r"^f\.pem: ES256 needs an EC P-256 key, got RSA-2048"):
        key_from_pem(public_pem(signing_key("RS256").key), alg="ES256", kid=None, source="f.pem")
    with pytest.raises(KeyLoadError, match=r"^f\.pem: alg 'HS256' is not allowed"):
        key_from_pem(public_pem(signing_key("ES256").key), alg="HS256", kid=None, source="f.pem")


def test_verification_key_checks_its_binding_when_built_directly() -> None:
    with pytest.raises(KeyLoadError, match="alg 'none' is not allowed"):
        VerificationKey("k", "none", signing_key("ES256").key.public_key())
    with pytest.raises(KeyLoadError, match="RSA key is 1024 bits"):
        VerificationKey("k", "PS256", rsa_private(1024).public_key())


def test_key_set_selection_rules() -> None:
    a = signing_key("ES256", "a").verification_key()
    b = signing_key("EdDSA", "b").verification_key()
    keyless = VerificationKey(None, "ES256", ec.generate_private_key(ec.SECP256R1()).public_key())

    both = KeySet([a, b])
    assert len(both) == 2
    assert both.select("a") is a
    assert both.select("b") is b
    assert both.select("c") is None
    assert both.select("") is None
    assert both.select(None) is None  # several keys and no kid: no guessing

    only = KeySet([a])
    assert only.select(None) is a  # exactly one key: a kid-less token may use it
    assert only.select("a") is a
    assert only.select("b") is None

    lone_keyless = KeySet([keyless])
    assert lone_keyless.select(None) is keyless
    assert lone_keyless.select("a") is None  # a kid given is looked up, never ignored

    mixed = KeySet([a, keyless])
    assert mixed.select(None) is None
    assert mixed.select("a") is a

    empty = KeySet([])
    assert len(empty) == 0
    assert empty.select(None) is None
    assert empty.select("a") is None
    assert list(both) == [a, b]


def test_key_set_refuses_duplicate_kids() -> None:
    a = signing_key("ES256", "a").verification_key()
    a2 = signing_key("EdDSA", "a").verification_key()
    with pytest.raises(KeyLoadError, match="duplicate kid 'a'"):
        KeySet([a, a2])


def test_key_set_public_jwks_round_trip() -> None:
    keys = [signing_key(alg, f"kid-{alg}").verification_key() for alg in ALGS]
    document = KeySet(keys).public_jwks()
    again = KeySet(keys_from_jwks(document, source="s"))
    assert [(k.kid, k.alg) for k in again] == [(k.kid, k.alg) for k in keys]
    for alg in ALGS:
        signing_input, signature = sign(alg, f"kid-{alg}")
        selected = again.select(f"kid-{alg}")
        assert selected is not None
        assert selected.verify(signing_input, signature)
