"""Issue 14 item 2: general RFC 7523 clients. `jti` is OPTIONAL in RFC 7523 §3; profile.replay says how a
replay is recognised without one. Assertions here are made by independent libraries (Authlib's client-side
signer and joserfc), not by the gateway's own minting code, under a relaxed profile."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from authlib.oauth2.rfc7523 import JWTBearerGrant
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.config import load_config
from gateway.config.load import ConfigError
from tests.support.gateway import AUDIENCE, base_config, metric_value

# The order of the P-256 group: (r, s) and (r, n - s) are both valid ECDSA signatures of one message.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
KID = "lib-1"
RELAXED = {"max_lifetime": "3600s", "required_claims": ["iss", "aud", "exp", "iat"]}


@pytest.fixture(scope="module")
def library_key() -> ECKey:
    return ECKey.generate_key("P-256", {"kid": KID})


def client(key: ECKey) -> dict[str, Any]:
    jwk = {**key.as_dict(private=False), "kid": KID, "alg": "ES256", "use": "sig"}
    return {"client_id": "rfc7523-app", "keys": {"jwks": {"keys": [jwk]}}}


async def start(gateway_factory: Any, upstream: Any, key: ECKey, replay: str) -> Any:
    profile = {"audiences": [AUDIENCE], **RELAXED, "replay": replay}
    return await gateway_factory(base_config(upstream.token_url, profile=profile, clients=[client(key)]))


def joserfc_assertion(key: ECKey, **claims: Any) -> str:
    """What a client built directly on a JOSE library sends: iss, aud, iat, exp and nothing else."""
    now = int(time.time())
    payload = {"iss": "rfc7523-app", "aud": AUDIENCE, "iat": now, "exp": now + 3600, **claims}
    return jwt.encode({"alg": "ES256", "kid": KID}, payload, key, algorithms=["ES256"])


def twin(assertion: str) -> str:
    """The same assertion with the other valid ES256 signature (r, n - s): anyone can compute it."""
    head, payload, signature = assertion.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    other = r + (P256_ORDER - s).to_bytes(32, "big")
    return f"{head}.{payload}.{base64.urlsafe_b64encode(other).rstrip(b'=').decode()}"


async def replay_hits(gw: Any) -> float:
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    return metric_value(text, 'bearer_gateway_replay_hits_total{client="rfc7523-app"}')


async def test_authlib_assertion_with_its_default_lifetime_is_accepted_once(gateway_factory, upstream, library_key):
    gw = await start(gateway_factory, upstream, library_key, "assertion")
    hits = await replay_hits(gw)  # the metrics registry is per process: compare, do not count from 0
    # Authlib's client side: exp = iat + 3600 s by default, no scope claim.
    assertion = JWTBearerGrant.sign(library_key, issuer="rfc7523-app", audience=AUDIENCE,
                                    subject="tel:+34600000001", header={"alg": "ES256", "kid": KID})
    claims = jwt.decode(assertion, library_key).claims
    assert claims["exp"] - claims["iat"] == 3600
    status, document, _ = await gw.token(assertion)
    assert status == 200, document
    assert upstream.seen[-1].form["assertion"] == assertion  # forwarded as it came
    status, document, _ = await gw.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    assert len(upstream.seen) == 1
    assert await replay_hits(gw) == hits + 1


async def test_assertion_without_jti_nor_sub_is_accepted_once(gateway_factory, upstream, library_key):
    gw = await start(gateway_factory, upstream, library_key, "assertion")
    assertion = joserfc_assertion(library_key)
    assert "jti" not in jwt.decode(assertion, library_key).claims
    assert (await gw.token(assertion))[0] == 200
    status, document, _ = await gw.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    assert len(upstream.seen) == 1


async def test_the_es256_twin_signature_is_the_same_assertion(gateway_factory, upstream, library_key):
    """The replay key is the signed content (header.payload), not the bytes: the twin is refused."""
    gw = await start(gateway_factory, upstream, library_key, "assertion")
    assertion = joserfc_assertion(library_key)
    other = twin(assertion)
    assert other != assertion
    assert jwt.decode(other, library_key).claims == jwt.decode(assertion, library_key).claims  # it verifies
    assert (await gw.token(other))[0] == 200
    status, document, _ = await gw.token(assertion)
    assert (status, document["error"]) == (400, "invalid_grant")
    assert len(upstream.seen) == 1


async def test_same_content_signed_again_is_a_replay(gateway_factory, upstream, library_key):
    """Without a jti, two assertions with the same claims in the same second are one assertion."""
    gw = await start(gateway_factory, upstream, library_key, "assertion")
    now = int(time.time())
    first, second = (joserfc_assertion(library_key, iat=now, exp=now + 600) for _ in range(2))
    assert first != second  # ECDSA signatures are randomised
    assert (await gw.token(first))[0] == 200
    assert (await gw.token(second))[0] == 400
    # A jti (or any changed claim) makes it a new assertion.
    assert (await gw.token(joserfc_assertion(library_key, iat=now, exp=now + 600, jti="n-2")))[0] == 200


async def test_a_present_jti_still_follows_the_jti_rules(gateway_factory, upstream, library_key):
    gw = await start(gateway_factory, upstream, library_key, "assertion")
    status, document, _ = await gw.token(joserfc_assertion(library_key, jti="bad jti with spaces"))
    assert (status, document["error"]) == (400, "invalid_grant")
    assert upstream.seen == []


async def test_replay_off_forwards_the_same_assertion_twice(gateway_factory, upstream, library_key):
    gw = await start(gateway_factory, upstream, library_key, "off")
    hits = await replay_hits(gw)
    assertion = joserfc_assertion(library_key)
    assert [(await gw.token(assertion))[0] for _ in range(2)] == [200, 200]
    assert len(upstream.seen) == 2
    assert await replay_hits(gw) == hits


async def test_replay_off_still_spends_the_client_quota(gateway_factory, upstream, library_key):
    profile = {"audiences": [AUDIENCE], **RELAXED, "replay": "off"}
    limits = {"per_client": {"rate": "1/m", "burst": 1}}
    gw = await gateway_factory(base_config(upstream.token_url, profile=profile, clients=[client(library_key)],
                                           rate_limits=limits))
    assertion = joserfc_assertion(library_key)
    assert (await gw.token(assertion))[0] == 200
    status, document, headers = await gw.token(assertion)
    assert (status, document["error"]) == (429, "temporarily_unavailable") and "Retry-After" in headers


async def test_jti_policy_still_refuses_an_assertion_without_jti(gateway_factory, upstream, library_key):
    profile = {"audiences": [AUDIENCE], "max_lifetime": "3600s", "required_claims": ["iss", "aud", "exp", "iat", "jti"]}
    gw = await gateway_factory(base_config(upstream.token_url, profile=profile, clients=[client(library_key)]))
    status, document, _ = await gw.token(joserfc_assertion(library_key))
    assert (status, document["error"]) == (400, "invalid_grant")
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"required_claims": ["iss", "aud", "exp"]}, "required_claims must include 'jti' when replay is 'jti'"),
        ({"required_claims": ["iss", "aud"], "replay": "assertion"}, "must include ['exp']"),
        ({"replay": "nonce"}, "'jti', 'assertion' or 'off'"),
    ],
)
def test_inconsistent_replay_policy_is_refused_at_load(tmp_path: Path, profile: dict[str, Any], message: str):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config("http://127.0.0.1:9/token", profile=profile)))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    text = str(error.value)
    assert "gw.yaml" in text and "profile" in text and message in text, text
