"""Client key material generated once per test session, for every algorithm the gateway supports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from gateway.jose.signing import SigningKey, generate_private_key_pem, load_signing_key, mint_assertion
from tests.support.gateway import AUDIENCE


@dataclass(frozen=True)
class ClientKey:
    client_id: str
    alg: str
    kid: str
    pem: bytes
    signer: SigningKey

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.signer.public_jwk()]}

    def assertion(self, **overrides: Any) -> str:
        claims: dict[str, Any] = {
            "iss": self.client_id,
            "sub": "tel:+34600000001",
            "aud": AUDIENCE,
            "scope": "dpv:FraudPreventionAndDetection sim-swap:check",
        }
        claims.update(overrides)
        extra = {k: v for k, v in claims.items() if k not in ("iss", "sub", "aud", "scope", "lifetime", "now", "jti")}
        return mint_assertion(
            self.signer,
            iss=claims["iss"],
            sub=claims["sub"],
            aud=claims["aud"],
            scope=claims["scope"],
            lifetime=claims.get("lifetime", 300),
            now=claims.get("now"),
            jti=claims.get("jti"),
            extra_claims=extra or None,
        )

    def write_pem(self, directory: Path) -> Path:
        path = directory / f"{self.client_id}.pem"
        path.write_bytes(self.pem)
        return path


@cache
def client_key(client_id: str, alg: str = "ES256", kid: str | None = None) -> ClientKey:
    pem = generate_private_key_pem(alg)
    kid = kid or f"{client_id}-{alg.lower()}"
    return ClientKey(client_id, alg, kid, pem, load_signing_key(pem, alg=alg, kid=kid, source="test"))


def client_entry(key: ClientKey, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"client_id": key.client_id, "keys": {"jwks": json.loads(json.dumps(key.jwks()))}}
    entry.update(extra)
    return entry
