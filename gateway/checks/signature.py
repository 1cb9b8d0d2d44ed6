"""Stage 12: the signature, with the issuing client's own key (RFC 8725 §3.8, RFC 7523 §3 item 9)."""

from __future__ import annotations

from gateway.checks.context import RequestContext
from gateway.errors import Reason, Rejection


class Signature:
    stage = "signature"

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.jws is not None and ctx.client is not None
        header = ctx.jws.header
        kid = header.get("kid")
        key = await ctx.client.select_key(kid)
        # The key is bound to one algorithm: a header alg other than the key's is a forgery attempt
        # (RFC 8725 §3.1), e.g. HS256 keyed with the public key, or RS256 against a PS256 key.
        if key is None or key.alg != header["alg"]:
            return Rejection(Reason.KEY_NOT_FOUND, self.stage)
        if not key.verify(ctx.jws.signing_input, ctx.jws.signature):
            return Rejection(Reason.SIGNATURE_INVALID, self.stage)
        ctx.key = key
        return None


class ClientGrant:
    """After the signature: may this (now authenticated) client use the jwt-bearer grant at all?"""

    stage = "client_grant"

    async def __call__(self, ctx: RequestContext) -> Rejection | None:
        assert ctx.client is not None
        # Checked only once the client is proven, so unauthorized_client is no client-existence oracle.
        if not ctx.client.jwt_bearer_allowed:
            return Rejection(Reason.GRANT_NOT_ALLOWED, self.stage)
        return None
