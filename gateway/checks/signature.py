"""Stages signature and client_grant: the issuing client's own key (RFC 8725 §3.8, RFC 7523 §3 item 9)."""

from __future__ import annotations

from functools import cache

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection
from gateway.jose.keys import ALGORITHMS, VerificationKey
from gateway.jose.signing import generate_private_key_pem, load_signing_key


@cache
def decoy_keys() -> dict[str, VerificationKey]:
    """One throwaway public key per algorithm (private halves discarded): what an unknown issuer's
    or an unknown kid's assertion is verified against, so that refusing it costs a verification too."""
    return {
        alg: load_signing_key(generate_private_key_pem(alg), alg=alg, kid="decoy", source="decoy").verification_key()
        for alg in sorted(ALGORITHMS)
    }


class Signature:
    stage = "signature"
    waits = True

    def __init__(self) -> None:
        self.decoys = decoy_keys()

    def _decoy(self, ctx: RequestContext, refusal: Rejection) -> Rejection:
        """Verify against a key nobody holds (always False), then give the real refusal."""
        assert ctx.jws is not None
        decoy = self.decoys.get(ctx.jws.header["alg"])
        if decoy is not None:
            decoy.verify(ctx.jws.signing_input, ctx.jws.signature)
        return refusal

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None
        if ctx.issuer_refusal is not None or ctx.client is None:
            return self._decoy(ctx, ctx.issuer_refusal or Rejection(Reason.ISS_UNKNOWN, "issuer"))
        header = ctx.jws.header
        kid = header.get("kid")
        key = await ctx.client.select_key(kid)
        # The key is bound to one algorithm: a header alg other than the key's is a forgery attempt
        # (RFC 8725 §3.1), e.g. HS256 keyed with the public key, or RS256 against a PS256 key.
        if key is None or key.alg != header["alg"]:
            return self._decoy(ctx, Rejection(Reason.KEY_NOT_FOUND, self.stage))
        if not key.verify(ctx.jws.signing_input, ctx.jws.signature):
            return Rejection(Reason.SIGNATURE_INVALID, self.stage)
        ctx.key = key
        return None


class ClientGrant:
    """After the signature: may this (now authenticated) client use the jwt-bearer grant at all?"""

    stage = "client_grant"
    waits = False

    def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.client is not None
        # Checked only once the client is proven, so unauthorized_client is no client-existence oracle.
        if not ctx.client.jwt_bearer_allowed:
            return Rejection(Reason.GRANT_NOT_ALLOWED, self.stage)
        return None
