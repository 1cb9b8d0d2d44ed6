"""The framework ceilings the gateway is held against: minimal aiohttp + uvloop, one process each.

    python -m bench.refs reject --port P
    python -m bench.refs verify-proxy --port P --key client-public.pem --upstream http://127.0.0.1:Q/token
    python -m bench.refs raw-reject --port P          # the same on asyncio Protocol + httptools (bench/raw_refs.py)
    python -m bench.refs raw-verify-proxy --port P --key ... --upstream ...

`reject` reads the body and answers 400 JSON. `verify-proxy` parses the form, verifies the
assertion's signature (RS256, or ES256 for an EC key) with a key parsed once at start, and
forwards the body to the static AS, answering what it answers; a bad signature gets 401 and
no upstream call. No claims, no replay cache, no metrics, no logs: only what any verifying
proxy on this stack cannot avoid.
"""

from __future__ import annotations

import argparse
import base64
import binascii
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_REJECT = b'{"error":"invalid_request","error_description":"malformed token request"}'
_UNAUTHORIZED = b'{"error":"invalid_client","error_description":"client authentication failed"}'


async def reject(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=400, body=_REJECT, content_type="application/json")


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class VerifyProxy:
    def __init__(self, key_pem: bytes, upstream: str) -> None:
        key = serialization.load_pem_public_key(key_pem)
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None
        if isinstance(key, rsa.RSAPublicKey):
            rsa_key = key
            pkcs1 = padding.PKCS1v15()
            sha256 = hashes.SHA256()

            def verify(message: bytes, signature: bytes) -> None:
                rsa_key.verify(signature, message, pkcs1, sha256)

        elif isinstance(key, ec.EllipticCurvePublicKey):
            ec_key = key
            ecdsa = ec.ECDSA(hashes.SHA256())

            def verify(message: bytes, signature: bytes) -> None:
                # RFC 7518 §3.4: R || S to DER.
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                ec_key.verify(der, message, ecdsa)

        else:
            raise SystemExit("verify-proxy needs an RSA or EC public key")
        self.verify = verify

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def stop(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def __call__(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = await request.post()
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or assertion.count(".") != 2:
            return web.Response(status=400, body=_REJECT, content_type="application/json")
        head, _, signature = assertion.rpartition(".")
        try:
            self.verify(head.encode("ascii"), _b64url(signature))
        except (InvalidSignature, ValueError, binascii.Error):
            return web.Response(status=401, body=_UNAUTHORIZED, content_type="application/json")
        assert self.session is not None
        async with self.session.post(
            self.upstream, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ) as answer:
            payload = await answer.read()
            return web.Response(status=answer.status, body=payload, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.refs")
    parser.add_argument("kind", choices=("reject", "verify-proxy", "raw-reject", "raw-verify-proxy"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", help="client public key PEM (verify-proxy)")
    parser.add_argument("--upstream", help="static AS token URL (verify-proxy)")
    args = parser.parse_args()
    if args.kind.startswith("raw-"):
        from bench import raw_refs

        if args.kind == "raw-reject":
            raw_refs.serve(raw_refs.RawReject(), args.port)
        else:
            verify = VerifyProxy(Path(args.key).read_bytes(), args.upstream).verify
            raw_refs.serve(raw_refs.RawVerifyProxy(verify, _b64url, args.upstream), args.port)
        return
    app = web.Application()
    if args.kind == "reject":
        app.router.add_post("/oauth2/token", reject)
    else:
        proxy = VerifyProxy(Path(args.key).read_bytes(), args.upstream)
        app.on_startup.append(proxy.start)
        app.on_cleanup.append(proxy.stop)
        app.router.add_post("/oauth2/token", proxy.__call__)
    # Same listener options as the gateway: no access log, keep-alive on.
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
