#!/usr/bin/env python3
"""Probe a Keycloak realm built from realm-camara.json the way Bearer Gateway will use it.

Acts as the gateway: generates an ES256 key, serves its JWKS on 127.0.0.1:<gateway-port>
(the realm's GATEWAY_ISSUER must be http://127.0.0.1:<gateway-port>), mints assertions with
PyJWT and records what Keycloak's token endpoint answers (status + JSON body) for each case.

    python deploy/keycloak/probe.py --keycloak http://127.0.0.1:8081 --gateway-port 8080 [--json out.json]

Throwaway test credentials only (admin/admin, the realm's test client secret).
"""

import argparse
import base64
import http.server
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CA_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SECRET_CLIENT = "camara-app-secret"
SECRET = "camara-app-secret-TEST-ONLY-not-a-real-secret"
PKJWT_CLIENT = "camara-app-pkjwt"
USER1 = "tel:+34600000001"
USER2 = "tel:+34600000002"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Key:
    def __init__(self, kid):
        self.kid = kid
        self.priv = ec.generate_private_key(ec.SECP256R1())
        n = self.priv.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
            "x": b64u(n.x.to_bytes(32, "big")),
            "y": b64u(n.y.to_bytes(32, "big")),
        }

    def sign(self, claims, **headers):
        h = {"kid": self.kid, "typ": "JWT"}
        h.update(headers)
        return jwt.encode(claims, self.priv, algorithm="ES256", headers=h)


def serve_jwks(keys, port):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"keys": [k.jwk for k in keys]}).encode()
            self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def post(url, form, headers=None):
    req = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def basic(cid, sec):
    raw = f"{urllib.parse.quote(cid, safe='')}:{urllib.parse.quote(sec, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def claims(iss, aud, sub, life=60, jti=None, iat=None, **extra):
    now = int(time.time()) if iat is None else iat
    c = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + life, "jti": jti or str(uuid.uuid4())}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def summarize(status, body):
    if isinstance(body, dict) and "access_token" in body:
        at = jwt.decode(body["access_token"], options={"verify_signature": False})
        rest = {k: v for k, v in body.items() if k != "access_token"}
        return {
            "status": status,
            "body": rest | {"access_token": "<jwt>"},
            "access_token_claims": {
                k: at.get(k) for k in ("iss", "sub", "azp", "aud", "scope", "preferred_username", "typ", "exp", "iat")
            },
        }
    return {"status": status, "body": body}


def admin_token(kc):
    _s, b = post(
        kc + "/realms/master/protocol/openid-connect/token",
        {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"},
    )
    return b["access_token"]


def events(kc, **query):
    q = urllib.parse.urlencode({"max": 1000, **query})
    req = urllib.request.Request(
        f"{kc}/admin/realms/camara/events?{q}", headers={"Authorization": "Bearer " + admin_token(kc)}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keycloak", required=True, help="Keycloak base URL, e.g. http://127.0.0.1:8081")
    ap.add_argument("--gateway-port", type=int, required=True)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--jwks-cache", action="store_true", help="also probe JWKS caching and key rotation (+25 s)")
    a = ap.parse_args()

    kc = a.keycloak.rstrip("/")
    realm = kc + "/realms/camara"
    tok = realm + "/protocol/openid-connect/token"
    gw = f"http://127.0.0.1:{a.gateway_port}"
    gw_key = Key("gw-" + uuid.uuid4().hex[:8])  # unique kid: Keycloak caches keys by kid
    keys = [gw_key]
    srv = serve_jwks(keys, a.gateway_port)
    client_key = Key("client-1")  # a CAMARA client's own key (Keycloak does not know it)
    rogue_key = Key(gw_key.kid)  # same kid as the gateway key, different key
    sec = basic(SECRET_CLIENT, SECRET)
    res = {}

    def run(name, form, headers=None):
        r = summarize(*post(tok, form, headers))
        res[name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)
        return r

    def grant(assertion, **extra):
        return {"grant_type": GRANT, "assertion": assertion, **extra}

    def fed_auth(aud=realm, sub=PKJWT_CLIENT, jti=None, life=60, key=None, iat_offset=0):
        ca = (key or gw_key).sign(claims(gw, aud, sub, life=life, jti=jti, iat=int(time.time()) + iat_offset))
        return {"client_assertion_type": CA_TYPE, "client_assertion": ca}

    t0 = time.time()
    ev_before = len(events(kc))
    # --- accepted
    run("ok_secret_basic_aud_issuer", grant(gw_key.sign(claims(gw, realm, USER1))), sec)
    run("ok_secret_basic_aud_token_endpoint", grant(gw_key.sign(claims(gw, tok, USER1))), sec)
    run("ok_secret_post", grant(gw_key.sign(claims(gw, realm, USER1)), client_id=SECRET_CLIENT, client_secret=SECRET))
    run("ok_federated_jwt", grant(gw_key.sign(claims(gw, realm, USER2)), client_id=PKJWT_CLIENT, **fed_auth()))
    run("ok_federated_jwt_without_client_id", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth()))
    run(
        "ok_scope_param",
        grant(gw_key.sign(claims(gw, realm, USER1)), scope="dpv:FraudPreventionAndDetection sim-swap:check"),
        sec,
    )
    run(
        "scope_claim_in_assertion_only",
        grant(gw_key.sign(claims(gw, realm, USER1, scope="dpv:FraudPreventionAndDetection sim-swap:check"))),
        sec,
    )
    run("ok_lifetime_300", grant(gw_key.sign(claims(gw, realm, USER1, life=300))), sec)
    # --- the plain CAMARA request (client-signed, no client authentication)
    camara = client_key.sign(
        claims(
            SECRET_CLIENT,
            "https://gateway.example.com/oauth2/token",
            USER1,
            scope="dpv:FraudPreventionAndDetection sim-swap:check",
        )
    )
    run("camara_plain_no_client_auth", grant(camara))
    run("camara_plain_client_id_only", grant(camara, client_id=SECRET_CLIENT))
    run("camara_plain_with_client_secret", grant(camara), sec)
    # --- client authentication faults
    run("wrong_client_secret", grant(gw_key.sign(claims(gw, realm, USER1))), basic(SECRET_CLIENT, "wrong"))
    run(
        "wrong_client_secret_post",
        grant(gw_key.sign(claims(gw, realm, USER1)), client_id=SECRET_CLIENT, client_secret="wrong"),
    )
    run("unknown_client", grant(gw_key.sign(claims(gw, realm, USER1))), basic("no-such-client", "x"))
    run("federated_jwt_aud_token_endpoint", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(aud=tok)))
    run("federated_jwt_wrong_sub", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(sub="someone-else")))
    run("federated_jwt_bad_signature", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(key=rogue_key)))
    run("federated_jwt_lifetime_600", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(life=600)))
    run(
        "federated_jwt_iat_310s_ago",
        grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(life=370, iat_offset=-310)),
    )
    run(
        "federated_jwt_iat_200s_ago",
        grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(life=260, iat_offset=-200)),
    )
    run(
        "federated_jwt_client_id_mismatch",
        grant(gw_key.sign(claims(gw, realm, USER2)), client_id=SECRET_CLIENT, **fed_auth()),
    )
    ca_jti = str(uuid.uuid4())
    run("federated_jwt_first_use", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(jti=ca_jti)))
    run("federated_jwt_replayed_client_assertion", grant(gw_key.sign(claims(gw, realm, USER2)), **fed_auth(jti=ca_jti)))
    # --- assertion faults (client authenticated with the secret)
    a1 = gw_key.sign(claims(gw, realm, USER1))
    run("replay_first", grant(a1), sec)
    run("replay_second", grant(a1), sec)
    now = int(time.time())
    run("expired", grant(gw_key.sign(claims(gw, realm, USER1, iat=now - 400, life=300))), sec)
    run("lifetime_301", grant(gw_key.sign(claims(gw, realm, USER1, life=301))), sec)
    run("lifetime_600", grant(gw_key.sign(claims(gw, realm, USER1, life=600))), sec)
    run("iat_in_future", grant(gw_key.sign(claims(gw, realm, USER1, iat=now + 60))), sec)
    run("no_iat", grant(gw_key.sign({k: v for k, v in claims(gw, realm, USER1).items() if k != "iat"})), sec)
    run(
        "no_iat_exp_in_400s",
        grant(gw_key.sign({k: v for k, v in claims(gw, realm, USER1, life=400).items() if k != "iat"})),
        sec,
    )
    run("iat_310s_ago_exp_in_60s", grant(gw_key.sign(claims(gw, realm, USER1, iat=now - 310, life=370))), sec)
    run("iat_290s_ago_exp_in_60s", grant(gw_key.sign(claims(gw, realm, USER1, iat=now - 290, life=350))), sec)
    run("nbf_in_future", grant(gw_key.sign(claims(gw, realm, USER1, nbf=now + 60))), sec)
    run("no_exp", grant(gw_key.sign({k: v for k, v in claims(gw, realm, USER1).items() if k != "exp"})), sec)
    run("no_jti", grant(gw_key.sign({k: v for k, v in claims(gw, realm, USER1).items() if k != "jti"})), sec)
    run("no_sub", grant(gw_key.sign({k: v for k, v in claims(gw, realm, USER1).items() if k != "sub"})), sec)
    run("wrong_aud", grant(gw_key.sign(claims(gw, "https://gateway.example.com/oauth2/token", USER1))), sec)
    run("aud_array_one", grant(gw_key.sign(claims(gw, [realm], USER1))), sec)
    run("aud_array_two", grant(gw_key.sign(claims(gw, [realm, tok], USER1))), sec)
    jti = str(uuid.uuid4())
    run("wrong_aud_then", grant(gw_key.sign(claims(gw, "https://elsewhere.example", USER1, jti=jti))), sec)
    run("same_jti_right_aud_after_wrong_aud", grant(gw_key.sign(claims(gw, realm, USER1, jti=jti))), sec)
    run("unknown_iss", grant(gw_key.sign(claims("https://unknown.example", realm, USER1))), sec)
    run("bad_signature", grant(rogue_key.sign(claims(gw, realm, USER1))), sec)
    jti = str(uuid.uuid4())
    run("bad_signature_first", grant(rogue_key.sign(claims(gw, realm, USER1, jti=jti))), sec)
    run("good_signature_same_jti_after_bad", grant(gw_key.sign(claims(gw, realm, USER1, jti=jti))), sec)
    run("unknown_kid", grant(Key("nope").sign(claims(gw, realm, USER1))), sec)
    run("subject_without_user", grant(gw_key.sign(claims(gw, realm, "tel:+34600000099"))), sec)
    jti = str(uuid.uuid4())
    run("subject_without_user_then", grant(gw_key.sign(claims(gw, realm, "tel:+34600000099", jti=jti))), sec)
    run("same_jti_known_user_after_no_user", grant(gw_key.sign(claims(gw, realm, USER1, jti=jti))), sec)
    run(
        "invalid_scope_param",
        grant(gw_key.sign(claims(gw, realm, USER1)), scope="dpv:FraudPreventionAndDetection nope:x"),
        sec,
    )
    run("not_a_jwt", grant("abc.def"), sec)
    run("missing_assertion", {"grant_type": GRANT}, sec)
    hs = jwt.encode(claims(gw, realm, USER1), "k" * 32, algorithm="HS256", headers={"kid": "gw-1"})
    run("alg_hs256", grant(hs), sec)
    none = (
        b64u(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        + "."
        + b64u(json.dumps(claims(gw, realm, USER1)).encode())
        + "."
    )
    run("alg_none", grant(none), sec)
    res["_elapsed_s"] = round(time.time() - t0, 2)

    if a.jwks_cache:
        # Keycloak caches the gateway JWKS per kid and refetches on an unknown kid, at most
        # once every 10 s (default minTimeBetweenRequests).
        new_key = Key("gw-" + uuid.uuid4().hex[:8])
        keys.append(new_key)
        run("rotated_kid_right_after_a_fetch", grant(new_key.sign(claims(gw, realm, USER1))), sec)
        time.sleep(11)
        run("rotated_kid_11s_later", grant(new_key.sign(claims(gw, realm, USER1))), sec)
        same_kid = Key(gw_key.kid)  # new key material under an already cached kid
        keys[:] = [same_kid, new_key]
        time.sleep(11)
        run("new_key_same_kid_11s_later", grant(same_kid.sign(claims(gw, realm, USER1))), sec)

    time.sleep(1)
    ev = events(kc)
    new = ev[: len(ev) - ev_before] if len(ev) >= ev_before else ev
    counts = {}
    for e in new:
        counts[e["type"]] = counts.get(e["type"], 0) + 1
    res["_events_by_type"] = counts
    res["_event_sample"] = new[:3]
    print("events by type:", counts)
    srv.shutdown()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
