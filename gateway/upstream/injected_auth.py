"""Client authentication the gateway injects upstream (RFC 6749 §2.3.1, RFC 7523 §2.2, RFC 8705 §2)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from multidict import CIMultiDict

from gateway.config.model import ClientAuth
from gateway.jose.signing import SigningKey, assertion_claims

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The form parameters that carry client authentication (RFC 6749 §2.3.1, RFC 7521 §4.2), besides the
# Authorization header: what the gateway injects, and what it looks for in an incoming request.
CLIENT_AUTH_PARAMETERS = ("client_id", "client_secret", "client_assertion", "client_assertion_type")
CLIENT_ASSERTION_LIFETIME = 60


def _form_encode(value: str) -> str:
    """UTF-8, then every octet outside the unreserved set percent-encoded (RFC 6749 Appendix B)."""
    return quote(value, safe="")


class InjectedAuth:
    """One client's upstream credentials, prepared once; `apply` adds them to a request."""

    def __init__(
        self,
        auth: ClientAuth,
        default_client_id: str,
        token_url: str,
        signing_key: SigningKey | None,
        gateway_issuer: str = "",
    ) -> None:
        self.method = auth.method
        self.client_id = auth.client_id or default_client_id
        self.audience = auth.audience or token_url
        self.signing_key = signing_key
        # RFC 7523 §3: a client's own assertion has iss = sub = client_id. A federated credential
        # (Keycloak's federated-jwt) is issued by the gateway about the client: iss = gateway issuer.
        self.assertion_issuer = gateway_issuer if auth.assertion_issuer == "gateway" else None
        self._secret = auth.secret.get() if auth.secret is not None else None
        self._basic: str | None = None
        if self.method == "client_secret_basic":
            assert self._secret is not None
            # RFC 6749 §2.3.1: id and secret are form-encoded before base64 (":" and non-ASCII safe).
            # A space goes as %20, not "+": every form decoder reads %20, but some ASes (Authlib-based
            # ones among them) only percent-decode and would take "+" literally.
            pair = f"{_form_encode(self.client_id)}:{_form_encode(self._secret)}"
            self._basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    def apply(self, form: dict[str, str], headers: CIMultiDict[str]) -> None:
        if self.method == "client_secret_basic":
            assert self._basic is not None
            headers["Authorization"] = self._basic
        elif self.method == "client_secret_post":
            assert self._secret is not None
            form["client_id"] = self.client_id
            form["client_secret"] = self._secret
        elif self.method == "private_key_jwt":
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = self._client_assertion()
        elif self.method == "tls_client_auth":
            # RFC 8705 §2: the certificate authenticates; client_id says which client it claims to be.
            form["client_id"] = self.client_id

    def _client_assertion(self) -> str:
        assert self.signing_key is not None
        # RFC 7523 §3: iss = sub = client_id, aud = the AS (token URL or issuer), unique jti, short exp.
        claims = assertion_claims(
            iss=self.assertion_issuer or self.client_id,
            sub=self.client_id,
            aud=self.audience,
            lifetime=CLIENT_ASSERTION_LIFETIME,
        )
        return self.signing_key.sign(claims)
