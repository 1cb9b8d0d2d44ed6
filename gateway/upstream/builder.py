"""Stage build: the request an unmodified AS accepts, built from a fully verified assertion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDict

from gateway.config.model import ClientUpstream
from gateway.jose.signing import SigningKey, assertion_claims
from gateway.upstream.injected_auth import InjectedAuth

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FORM_HEAD = urlencode({"grant_type": JWT_BEARER}).encode("ascii") + b"&assertion="


@dataclass(frozen=True, slots=True)
class CallerCredentials:
    """The caller's own client authentication (profile.incoming_client_auth: forward), sent as it came."""

    form: Mapping[str, str]
    authorization: str | None = None


class UpstreamRequestBuilder:
    """Per client: `forward` sends the caller's assertion, `resign` a new one from the gateway."""

    def __init__(
        self,
        settings: ClientUpstream,
        auth: InjectedAuth,
        gateway_issuer: str,
        gateway_key: SigningKey | None,
    ) -> None:
        self.mode = settings.mode
        self.audience = settings.audience
        self.lifetime = int(settings.lifetime)
        self.copy_claims = settings.copy_claims
        self.subject_map = settings.subject_map
        self.scope_parameter = settings.scope_parameter
        self.auth = auth
        self.issuer = gateway_issuer
        self.gateway_key = gateway_key

    def resign(self, claims: Mapping[str, Any]) -> str:
        """A new assertion from the gateway as trusted issuer (README: Deploying in front of Keycloak)."""
        assert self.gateway_key is not None and self.audience is not None
        # RFC 7523 §3 item 2 wants a sub; when the profile lets an assertion without one through, the AS
        # (not the gateway, with a 500) is the one to refuse the grant.
        sub = claims.get("sub")
        # A fresh jti (RFC 7523 §3 item 7): never the caller's.
        new = assertion_claims(
            iss=self.issuer,
            sub=self.subject_map.get(sub, sub) if isinstance(sub, str) else None,
            aud=self.audience,
            lifetime=self.lifetime,
        )
        for name in self.copy_claims:
            if name in claims and name not in new:
                new[name] = claims[name]
        return self.gateway_key.sign(new)

    def build(
        self, form: Mapping[str, str], claims: Mapping[str, Any], caller: CallerCredentials | None = None
    ) -> tuple[bytes, CIMultiDict[str]]:
        """The upstream form body and headers for the verified request `form` with assertion `claims`;
        the client's credentials are injected unless the caller brings its own."""
        assertion = form["assertion"] if self.mode == "forward" else self.resign(claims)
        out: dict[str, str] = {}
        scope = claims.get("scope")
        if self.scope_parameter and isinstance(scope, str):
            # Keycloak reads the requested scope from the form parameter, not from the assertion.
            out["scope"] = scope
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["Accept"] = "application/json"
        # Identity: the gateway reads the answer (drops refresh_token) and must see plain JSON.
        headers["Accept-Encoding"] = "identity"
        if caller is not None:
            out.update(caller.form)
            if caller.authorization:
                headers["Authorization"] = caller.authorization
        else:
            self.auth.apply(out, headers)
        # The assertion goes as it is: a compact JWS (checked by assertion_shape, or signed here) is
        # base64url and dots, which form encoding leaves unchanged; only the other parameters are encoded.
        rest = urlencode(out).encode("ascii")
        head = _FORM_HEAD + assertion.encode("ascii")
        return (head + b"&" + rest if rest else head), headers
