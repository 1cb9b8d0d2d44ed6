"""Client keys and pre-minted token request bodies for wrk (one urlencoded form per line)."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.jose.jws import b64url_encode
from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key, mint_assertion

JWT_BEARER_FORM = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
AUDIENCE = "https://gateway.bench/oauth2/token"
SUBJECT = "tel:+34600000001"
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"


@dataclass(frozen=True)
class BenchClient:
    client_id: str
    alg: str
    kid: str
    pem: bytes

    @property
    def signer(self) -> SigningKey:
        return load_signing_key(self.pem, alg=self.alg, kid=self.kid, source=self.client_id)

    def public_pem(self) -> bytes:
        return self.signer.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, object]:
        return {"keys": [self.signer.public_jwk()]}


def new_client(client_id: str, alg: str) -> BenchClient:
    return BenchClient(client_id, alg, f"{client_id}-1", generate_private_key_pem(alg))


def _mint(args: tuple[BenchClient, str, int, int]) -> list[str]:
    client, prefix, start, count = args
    signer = client.signer
    return [
        JWT_BEARER_FORM
        + mint_assertion(signer, iss=client.client_id, sub=SUBJECT, aud=AUDIENCE, scope=SCOPE, jti=f"{prefix}-{n}")
        for n in range(start, start + count)
    ]


def mint_bodies(client: BenchClient, count: int, *, processes: int | None = None) -> list[str]:
    """`count` valid, unique (fresh jti) requests; minted in parallel, RS256 signing is the cost."""
    prefix = uuid.uuid4().hex[:12]
    workers = max(1, min(processes or os.cpu_count() or 1, 8))
    chunk = max(1, -(-count // (workers * 4)))
    jobs = [(client, prefix, start, min(chunk, count - start)) for start in range(0, count, chunk)]
    if workers == 1 or count < 2000:
        return [body for job in jobs for body in _mint(job)]
    with ProcessPoolExecutor(workers) as pool:
        return [body for part in pool.map(_mint, jobs) for body in part]


def forged_bodies(client: BenchClient, count: int, *, audience: str = AUDIENCE) -> list[str]:
    """Well-formed, fresh, known-iss requests whose signature is random bytes of the right length."""
    signer = client.signer
    size = 256 if client.alg in ("RS256", "PS256") else 64
    out = []
    for n in range(count):
        token = mint_assertion(signer, iss=client.client_id, sub=SUBJECT, aud=audience, scope=SCOPE, jti=f"forged-{n}")
        head = token.rpartition(".")[0]
        out.append(f"{JWT_BEARER_FORM}{head}.{b64url_encode(os.urandom(size))}")
    return out


def unknown_issuer_bodies(count: int) -> list[str]:
    """Valid-looking, fresh requests whose iss names no configured client (rejected at the issuer stage)."""
    stranger = new_client("unknown-app", "ES256")
    return _mint((stranger, "unknown", 0, count))


def write_bodies(path: Path, bodies: list[str]) -> Path:
    path.write_text("\n".join(bodies) + "\n")
    return path
