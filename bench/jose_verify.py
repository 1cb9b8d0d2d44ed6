"""Microbenchmark: signature verification per algorithm, gateway vs PyJWT algorithm object vs raw cryptography.

Run from the repository root: .venv/bin/python bench/jose_verify.py [iterations]
"""

from __future__ import annotations

import platform
import sys
import timeit
from collections.abc import Callable
from functools import partial

import cryptography
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from gateway.jose.jws import parse_compact
from gateway.jose.signing import generate_private_key_pem, load_signing_key, mint_assertion

ALGS = ("RS256", "PS256", "ES256", "EdDSA")
PYJWT: dict[str, Algorithm] = {
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "PS256": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256, ec.SECP256R1),
    "EdDSA": OKPAlgorithm(),
}
CAPS = {"max_header_bytes": 1024, "max_payload_bytes": 4096}


def best_us(cases: list[tuple[str, Callable[[], object]]], iterations: int, rounds: int = 7) -> list[float]:
    """Best of `rounds`, in µs per call; rounds interleave the cases so load drift hits all alike."""
    best = [float("inf")] * len(cases)
    for _ in range(rounds):
        for index, (_, fn) in enumerate(cases):
            best[index] = min(best[index], timeit.timeit(fn, number=iterations))
    return [seconds / iterations * 1e6 for seconds in best]


def es256_raw_to_der_verify(public: ec.EllipticCurvePublicKey, sig: bytes, msg: bytes) -> None:
    # What any ES256 verifier must do: RFC 7518 §3.4 R||S to DER, then ECDSA verify.
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, msg, ec.ECDSA(hashes.SHA256()))


def raw_verifier(alg: str, public: object, msg: bytes, sig: bytes) -> Callable[[], object]:
    """The same check written directly against cryptography."""
    if alg == "RS256":
        assert isinstance(public, rsa.RSAPublicKey)
        return partial(public.verify, sig, msg, padding.PKCS1v15(), hashes.SHA256())
    if alg == "PS256":
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return partial(public.verify, sig, msg, pss, hashes.SHA256())
    if alg == "ES256":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return partial(es256_raw_to_der_verify, public, sig, msg)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return partial(public.verify, sig, msg)


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(
        f"python {platform.python_version()}, PyJWT {jwt.__version__}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}; {iterations} iterations, best of 7 interleaved rounds; µs per call"
    )
    rows: list[tuple[str, str, float]] = []
    for alg in ALGS:
        signer = load_signing_key(generate_private_key_pem(alg), alg=alg, kid="k", source="bench")
        token = mint_assertion(signer, iss="acme", sub="tel:+34600000000", aud="https://gw/token", scope="dpv:x a:b")
        jws = parse_compact(token, **CAPS)
        key = signer.verification_key()
        msg, sig = jws.signing_input, jws.signature
        bad = bytes([sig[0] ^ 1]) + sig[1:]
        assert key.verify(msg, sig) and not key.verify(msg, bad)
        cases: list[tuple[str, Callable[[], object]]] = [
            ("gateway VerificationKey.verify", partial(key.verify, msg, sig)),
            ("PyJWT algorithm object .verify", partial(PYJWT[alg].verify, msg, key.key, sig)),
            ("raw cryptography", raw_verifier(alg, key.key, msg, sig)),
            ("gateway, bad signature", partial(key.verify, msg, bad)),
            ("gateway, wrong length (early out)", partial(key.verify, msg, sig[:-1])),
        ]
        if alg == "ES256":
            cases.append(("parse_compact of the assertion", partial(parse_compact, token, **CAPS)))
        rows.extend((alg, label, us) for (label, _), us in zip(cases, best_us(cases, iterations), strict=True))
    width = max(len(label) for _, label, _ in rows)
    for alg, label, us in rows:
        print(f"{alg:6} {label:{width}}  {us:9.2f}")


if __name__ == "__main__":
    main()
