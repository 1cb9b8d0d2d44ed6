#!/usr/bin/env python3
"""Ask a live Ory Hydra v2.3.0 what it does with RFC 7523 jwt-bearer requests (deploy/hydra/FINDINGS.md).

Starts Hydra from deploy/hydra/hydra.yml (scripts/hydra.sh builds it once), registers the
client and trust relationships the way deploy/hydra/README.md does, mints assertions with PyJWT
(not with the gateway's code) and prints a Markdown table of Hydra's answers.

    .venv/bin/python deploy/hydra/probe.py [--json out.json]

Throwaway test credentials only.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e import hydra_proc as hp

GATEWAY_TOKEN_URL = "https://gateway.example.com/oauth2/token"   # Hydra's advertised token URL
CALLER = "acme-app"                 # a CAMARA client id used directly as a trusted issuer
GATEWAY_ISSUER = "https://gateway.example.com"
SUB = "tel:+34600000001"
SCOPE = "dpv:FraudPreventionAndDetection sim-swap:check"
CA_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Key:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.priv = ec.generate_private_key(ec.SECP256R1())
        n = self.priv.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.priv, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT", **headers})


def claims(iss: str = CALLER, aud: Any = GATEWAY_TOKEN_URL, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": iss, "sub": SUB, "aud": aud, "iat": now, "exp": now + 300,
                           "jti": str(uuid.uuid4()), "scope": SCOPE}
    for name, value in over.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def summarise(status: int, body: Any, hydra: hp.HydraProcess) -> str:
    if status == 200 and isinstance(body, dict) and "access_token" in body:
        info = hydra.introspect(body["access_token"])
        keys = sorted(k for k in body if k != "access_token")
        return (f"token ({', '.join(keys)}; introspection: client_id={info.get('client_id')}, "
                f"sub={info.get('sub')}, scope=\"{info.get('scope', '')}\")")
    return "`" + json.dumps(body) + "`"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args()

    caller, gateway, other, client_key = Key("acme-1"), Key("gw-1"), Key("acme-1"), Key("gw-client-1")
    rows: list[tuple[str, int, str]] = []
    with hp.HydraProcess(token_url=GATEWAY_TOKEN_URL) as hydra:
        hydra.create_client(hp.CLIENT_ID, hp.CLIENT_SECRET)
        hydra.create_client("camara-app-post", hp.CLIENT_SECRET, auth_method="client_secret_post")
        hydra.create_client("camara-app-pkjwt", auth_method="private_key_jwt", jwks={"keys": [client_key.jwk]},
                           signing_alg="ES256")
        hydra.create_client("camara-app-pkjwt-rs256", auth_method="private_key_jwt", jwks={"keys": [client_key.jwk]})
        hydra.create_client("no-jwt-grant", hp.CLIENT_SECRET, grant_types=("client_credentials",))
        hydra.create_client("narrow-scope", hp.CLIENT_SECRET, scope="sim-swap:check")
        hydra.trust_issuer(CALLER, caller.jwk, scope=("dpv:FraudPreventionAndDetection", "sim-swap:check"))
        hydra.trust_issuer(GATEWAY_ISSUER, gateway.jwk)
        hydra.trust_issuer("pinned-issuer", other.jwk, subject="tel:+34600000002")
        secret = hp.basic(hp.CLIENT_ID, hp.CLIENT_SECRET)

        def ask(name: str, assertion: str | None, headers: dict[str, str] | None = None,
                scope: str | None = SCOPE, **form: str) -> tuple[int, Any]:
            data = {"grant_type": hp.GRANT_TYPE, **form}
            if assertion is not None:
                data["assertion"] = assertion
            if scope is not None:
                data["scope"] = scope
            status, body = hp.post_form(hydra.token_url, data, headers)
            rows.append((name, status, summarise(status, body, hydra)))
            return status, body

        def client_assertion(aud: str, **over: Any) -> str:
            now = int(time.time())
            c = {"iss": "camara-app-pkjwt", "sub": "camara-app-pkjwt", "aud": aud, "iat": now, "exp": now + 60,
                 "jti": str(uuid.uuid4()), **over}
            return client_key.sign(c)

        # Client authentication for the grant.
        ask("camara_plain_no_client_auth", caller.sign(claims()), scope=None)
        ask("camara_plain_client_id_only", caller.sign(claims()), client_id=hp.CLIENT_ID)
        ask("camara_plain_with_client_secret_basic", caller.sign(claims()), secret)
        ask("client_secret_post", caller.sign(claims()), client_id="camara-app-post", client_secret=hp.CLIENT_SECRET)
        rs256_default = {"iss": "camara-app-pkjwt-rs256", "sub": "camara-app-pkjwt-rs256"}
        ask("private_key_jwt_es256_key_client_left_at_default_alg", caller.sign(claims()),
            client_assertion_type=CA_TYPE, client_assertion=client_key.sign({
                **jwt.decode(client_assertion(hydra.token_url), options={"verify_signature": False}),
                **rs256_default}))
        ask("private_key_jwt_aud_hydra_token_url", caller.sign(claims()), client_assertion_type=CA_TYPE,
            client_assertion=client_assertion(hydra.token_url))
        ask("private_key_jwt_aud_advertised_token_url", caller.sign(claims()), client_assertion_type=CA_TYPE,
            client_assertion=client_assertion(GATEWAY_TOKEN_URL))
        ask("private_key_jwt_aud_issuer", caller.sign(claims()), client_assertion_type=CA_TYPE,
            client_assertion=client_assertion(hydra.issuer))
        ca = client_assertion(hydra.token_url)
        ask("private_key_jwt_first_use", caller.sign(claims()), client_assertion_type=CA_TYPE, client_assertion=ca)
        ask("private_key_jwt_replayed_client_assertion", caller.sign(claims()), client_assertion_type=CA_TYPE,
            client_assertion=ca)
        ask("wrong_client_secret", caller.sign(claims()), hp.basic(hp.CLIENT_ID, "wrong"))
        ask("unknown_client", caller.sign(claims()), hp.basic("nobody", "x"))
        ask("client_without_jwt_bearer_grant_type", caller.sign(claims()), hp.basic("no-jwt-grant", hp.CLIENT_SECRET))
        # Issuer, key, signature.
        ask("resign_gateway_issuer_aud_hydra_token_url",
            gateway.sign(claims(iss=GATEWAY_ISSUER, aud=hydra.token_url)), secret)
        ask("aud_hydra_issuer_url", caller.sign(claims(aud=hydra.issuer)), secret)
        ask("aud_array_two", caller.sign(claims(aud=[GATEWAY_TOKEN_URL, "https://other.example.com"])), secret)
        ask("wrong_aud", caller.sign(claims(aud="https://other.example.com/token")), secret)
        ask("unknown_iss", caller.sign(claims(iss="nobody")), secret)
        ask("bad_signature", other.sign(claims()), secret)
        ask("unknown_kid", caller.sign(claims(), kid="acme-2"), secret)
        ask("no_kid", jwt.encode(claims(), caller.priv, algorithm="ES256"), secret)
        ask("alg_hs256", jwt.encode(claims(), "k" * 32, algorithm="HS256", headers={"kid": "acme-1"}), secret)
        ask("alg_none", jwt.encode(claims(), None, algorithm="none", headers={"kid": "acme-1"}), secret)
        ask("not_a_jwt", "not-a-jwt", secret)
        ask("missing_assertion", None, secret)
        # Subject.
        ask("pinned_subject_other_sub", other.sign(claims(iss="pinned-issuer")), secret)
        ask("pinned_subject_right_sub", other.sign(claims(iss="pinned-issuer", sub="tel:+34600000002")), secret)
        ask("no_sub", caller.sign(claims(sub=None)), secret)
        # Time window and jti.
        now = int(time.time())
        ask("expired", caller.sign(claims(iat=now - 400, exp=now - 100)), secret)
        ask("lifetime_300", caller.sign(claims(iat=now, exp=now + 300)), secret)
        ask("lifetime_301", caller.sign(claims(iat=now, exp=now + 301)), secret)
        ask("lifetime_3600_iat_now", caller.sign(claims(iat=now, exp=now + 3600)), secret)
        ask("iat_in_future", caller.sign(claims(iat=now + 60, exp=now + 120)), secret)
        ask("iat_400s_ago_exp_in_60s", caller.sign(claims(iat=now - 400, exp=now + 60)), secret)
        ask("nbf_in_future", caller.sign(claims(nbf=now + 60)), secret)
        ask("no_iat", caller.sign(claims(iat=None)), secret)
        ask("no_exp", caller.sign(claims(exp=None)), secret)
        ask("no_jti", caller.sign(claims(jti=None)), secret)
        first = caller.sign(claims())
        ask("replay_first", first, secret)
        ask("replay_second", first, secret)
        jti = str(uuid.uuid4())
        ask("wrong_aud_then", caller.sign(claims(jti=jti, aud="https://other.example.com/token")), secret)
        ask("same_jti_right_aud_after_wrong_aud", caller.sign(claims(jti=jti)), secret)
        jti = str(uuid.uuid4())
        ask("bad_scope_then", caller.sign(claims(jti=jti)), secret, scope="sim-swap:retrieve-date")
        ask("same_jti_good_scope_after_bad_scope", caller.sign(claims(jti=jti)), secret)
        jti = str(uuid.uuid4())
        ask("jti_first_issuer", caller.sign(claims(jti=jti)), secret)
        ask("same_jti_other_issuer", gateway.sign(claims(iss=GATEWAY_ISSUER, aud=hydra.token_url, jti=jti)), secret)
        # Scope handling.
        ask("no_scope_parameter_scope_claim_only", caller.sign(claims()), secret, scope=None)
        ask("scope_param_not_in_trust_relationship", caller.sign(claims()), secret, scope="sim-swap:retrieve-date")
        ask("scope_param_not_in_client", caller.sign(claims()), hp.basic("narrow-scope", hp.CLIENT_SECRET),
            scope="dpv:FraudPreventionAndDetection")
        ask("scope_param_unknown", caller.sign(claims()), secret, scope="nope:x")
        # Trust relationship administration.
        for name, issuer, key, subject in (("admin_same_issuer_same_kid_again", CALLER, caller, None),
                                           ("admin_same_issuer_new_kid", CALLER, Key("acme-2"), None)):
            try:
                answer = hydra.trust_issuer(issuer, key.jwk, subject=subject)
                rows.append((name, 201, f"created, id {str(answer.get('id'))[:8]}…"))
            except hp.HydraError as exc:
                rows.append((name, 0, f"`{exc}`"))
        seen = hydra.token_requests_seen()
        rows.append(("log_lines_for_post_oauth2_token", seen, f"{seen} requests counted in Hydra's JSON request log"))

    # Phase 2: the relaxed switches (jti_optional, iat_optional, Hydra's default max_ttl 720h).
    relaxed = {"OAUTH2_GRANT_JWT_JTI_OPTIONAL": "true", "OAUTH2_GRANT_JWT_IAT_OPTIONAL": "true",
               "OAUTH2_GRANT_JWT_MAX_TTL": "720h"}
    with hp.HydraProcess(token_url=GATEWAY_TOKEN_URL, extra_env=relaxed) as hydra:
        hydra.create_client(hp.CLIENT_ID, hp.CLIENT_SECRET)
        hydra.trust_issuer(CALLER, caller.jwk)
        secret = hp.basic(hp.CLIENT_ID, hp.CLIENT_SECRET)
        no_jti = caller.sign(claims(jti=None))
        ask("relaxed: no_jti_first", no_jti, secret)
        ask("relaxed: no_jti_same_bytes_again", no_jti, secret)
        ask("relaxed: no_iat", caller.sign(claims(iat=None)), secret)
        ask("relaxed: no_iat_exp_in_3600s", caller.sign(claims(iat=None, exp=int(time.time()) + 3600)), secret)
        now = int(time.time())
        ask("relaxed: lifetime_3600_iat_now", caller.sign(claims(iat=now, exp=now + 3600)), secret)

    print("| case | status | answer |\n|---|---|---|")
    for name, status, text in rows:
        print(f"| `{name}` | {status} | {text} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{"case": n, "status": s, "answer": t} for n, s, t in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
