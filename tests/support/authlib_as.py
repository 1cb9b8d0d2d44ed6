"""A real OAuth 2.0 authorization server for tests, built on Authlib, that verifies everything it receives.

Authlib's `AuthorizationServer` is framework-agnostic: this module adapts aiohttp requests into it and
runs it in a worker thread (it is synchronous, and it fetches JWKS over HTTP from the gateway that runs
on the test's event loop). It implements the RFC 7523 §2.1 JWT-bearer grant *after* RFC 6749 §3.2.1
client authentication, the way Keycloak, Authlete and Curity do: client_secret_basic,
client_secret_post (RFC 6749 §2.3.1), private_key_jwt (RFC 7523 §2.2), tls_client_auth
(RFC 8705 §2.1) and none. An assertion is trusted when its `iss` is the authenticated client (the
gateway's forward mode, keys registered with the client) or a trusted issuer whose JWKS it fetches
over HTTP (the gateway's resign mode, like Keycloak's jwt-authorization-grant identity provider).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import ssl
import threading
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl

from aiohttp import web
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from cryptography import x509
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/realms/camara/protocol/openid-connect/token"
# What the gateway can sign with; joserfc allows only its "recommended" subset unless told.
ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
CLIENT_AUTH_PARAMETERS = ("client_id", "client_secret", "client_assertion", "client_assertion_type")
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none"]


@dataclass
class RegisteredClient(ClientMixin):  # type: ignore[misc]
    """A client registered at the AS with exactly one token endpoint authentication method."""

    client_id: str
    auth_method: str
    secret: str | None = None
    auth_jwks: dict[str, Any] | None = None  # private_key_jwt: keys inline ...
    auth_jwks_uri: str | None = None  # ... or fetched over HTTP
    tls_subject_dn: str | None = None  # tls_client_auth: RFC 8705 §2.1.2 tls_client_auth_subject_dn
    assertion_jwks: dict[str, Any] | None = None  # keys of assertions whose iss is this client (forward mode)
    grant_types: tuple[str, ...] = (JWT_BEARER,)

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret is None:
            return False
        return hmac.compare_digest(self.secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def get_allowed_scope(self, scope: str) -> str:
        return scope


@dataclass
class Record:
    """What the AS saw and decided for one token request (secrets redacted)."""

    status: int = 0
    error: str | None = None
    error_description: str | None = None
    form: dict[str, str] = field(default_factory=dict)
    basic_auth: bool = False
    auth_method: str | None = None
    client_id: str | None = None
    client_assertion_header: dict[str, Any] | None = None
    client_assertion_claims: dict[str, Any] | None = None
    assertion_header: dict[str, Any] | None = None
    assertion_claims: dict[str, Any] | None = None
    peer_subject: str | None = None
    peer_port: int | None = None
    token: dict[str, Any] | None = None
    response_body: bytes = b""


class _Request(OAuth2Request):  # type: ignore[misc]
    """An aiohttp request adapted to Authlib: form, headers, and the verified TLS peer certificate."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        form: dict[str, str],
        peer_certificate: x509.Certificate | None,
        record: Record,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)
        self.peer_certificate = peer_certificate
        self.record = record

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


def fetch_jwks(uri: str, server: AuthlibAS) -> KeySet:
    """GET a JWKS over HTTP (blocking; the AS runs in a worker thread) and import it."""
    with urllib.request.urlopen(uri, timeout=5) as response:
        document = json.loads(response.read())
        server.jwks_fetches.append((uri, response.headers.get("Cache-Control")))
    return KeySet.import_key_set(document)


class ClientAssertionAuth(JWTBearerClientAssertion):  # type: ignore[misc]
    """private_key_jwt (RFC 7523 §2.2, §3): a signed client assertion with iss = sub = client_id."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: AuthlibAS) -> None:
        super().__init__(leeway=0)
        self.server = server

    def __call__(self, query_client: Any, request: _Request) -> RegisteredClient | None:
        client: RegisteredClient | None = super().__call__(query_client, request)
        if client is not None:
            header, claims = self.extract_assertion(request.form["client_assertion"])
            request.record.client_assertion_header, request.record.client_assertion_claims = dict(header), claims
        return client

    def get_audiences(self) -> list[str]:
        # RFC 7523 §3 item 3: the token endpoint URL (or the AS issuer) identifies the AS.
        return self.server.audiences()

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # RFC 7523 §3 item 7: a jti is accepted once per client.
        return self.server.first_use(("client_assertion", claims["sub"], jti))

    def resolve_client_public_key(self, client: RegisteredClient) -> KeySet:
        if client.auth_jwks_uri is not None:
            return fetch_jwks(client.auth_jwks_uri, self.server)
        if client.auth_jwks is None:
            raise InvalidClientError(description="client has no registered keys")
        return KeySet.import_key_set(cast(KeySetSerialization, client.auth_jwks))

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="client assertion signature or format invalid") from exc
        self.verify_claims(token.claims)
        return token.claims


def authenticate_tls_client(query_client: Any, request: _Request) -> RegisteredClient | None:
    """RFC 8705 §2.1 (PKI method): the TLS layer validated the chain; the subject DN must be the registered one."""
    client_id = request.form.get("client_id")
    certificate = request.peer_certificate
    if not client_id or certificate is None:
        return None
    client: RegisteredClient | None = query_client(client_id)
    if client is None or client.tls_subject_dn is None:
        return None
    if hmac.compare_digest(certificate.subject.rfc4514_string().encode(), client.tls_subject_dn.encode()):
        return client
    return None


class GatewayJWTBearerGrant(JWTBearerGrant):  # type: ignore[misc]
    """RFC 7523 §2.1 grant behind explicit client authentication (RFC 6749 §3.2.1)."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    LEEWAY = 0

    server: AuthlibAS
    request: _Request

    def validate_token_request(self) -> None:
        assertion = self.request.form.get("assertion")
        if not assertion:
            raise InvalidRequestError("Missing 'assertion' in request")
        client = self._authenticate_client(assertion)
        self.request.client = client
        self.request.record.client_id = client.get_client_id()
        self.request.record.auth_method = self.request.auth_method
        claims = self.process_assertion_claims(assertion)
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"The client is not authorized to use 'grant_type={self.GRANT_TYPE}'")
        self.validate_requested_scope()
        user = self.authenticate_user(claims["sub"])
        if user is None:
            raise InvalidGrantError(description="Invalid 'sub' value in assertion")
        self.request.user = user
        self.claims = claims

    def _authenticate_client(self, assertion: str) -> RegisteredClient:
        form = self.request.form
        if "Authorization" in self.request.headers or any(name in form for name in CLIENT_AUTH_PARAMETERS):
            client: RegisteredClient = self.authenticate_token_endpoint_client()
            return client
        # No client authentication at all: the assertion's iss names a public client ("none", RFC 7591 §2),
        # and the assertion, verified below with that client's keys, is all it presents (RFC 7523 §2.1).
        _, unverified = self.extract_assertion(assertion)
        issuer = unverified.get("iss")
        found = self.server.query_client(issuer) if isinstance(issuer, str) else None
        if found is None or not found.check_endpoint_auth_method("none", "token"):
            raise InvalidClientError(status_code=401, description="client authentication required")
        self.request.auth_method = "none"
        return found

    def process_assertion_claims(self, assertion: str) -> dict[str, Any]:
        header, unverified = self.extract_assertion(assertion)
        issuer = unverified.get("iss")
        keys = self.server.assertion_keys(issuer, self.request.client)
        if keys is None:
            raise InvalidGrantError(description="The assertion issuer is not trusted")
        try:
            token = jwt.decode(assertion, keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidGrantError(description="assertion signature or format invalid") from exc
        self.verify_claims(token.claims)
        claims: dict[str, Any] = dict(token.claims)
        # RFC 7523 §3 item 2: a subject; item 7: a jti, accepted once per issuer.
        if not isinstance(claims.get("sub"), str):
            raise InvalidGrantError(description="Missing claim: 'sub'")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not self.server.first_use(("assertion", issuer, jti)):
            raise InvalidGrantError(description="JWT ID missing or used before")
        self.request.record.assertion_header, self.request.record.assertion_claims = dict(header), claims
        return claims

    def get_audiences(self) -> list[str]:
        # RFC 7523 §3 item 3.
        return self.server.audiences()

    def authenticate_user(self, subject: str) -> str | None:
        subjects = self.server.subjects
        return subject if subjects is None or subject in subjects else None

    def has_granted_permission(self, client: RegisteredClient, user: str) -> bool:
        return True

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        scope = self.request.payload.scope or self.claims.get("scope")
        token = self.generate_token(scope=scope, user=self.request.user, include_refresh_token=False)
        self.request.record.token = dict(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class AuthlibAS(AuthorizationServer):  # type: ignore[misc]
    """The test AS: register clients and trusted issuers, start it, then read `records`."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        scopes_supported: Iterable[str] | None = None,
        subjects: Iterable[str] | None = None,
        extra_audiences: Iterable[str] = (),
        issue_refresh_token: bool = False,
        delay: float = 0.0,
    ) -> None:
        super().__init__(scopes_supported=list(scopes_supported) if scopes_supported is not None else None)
        self.tls = tls
        self.subjects = set(subjects) if subjects is not None else None
        self.extra_audiences = list(extra_audiences)
        self.issue_refresh_token = issue_refresh_token
        self.delay = delay  # seconds to sit on every token request before answering
        self.clients: dict[str, RegisteredClient] = {}
        self.trusted_issuers: dict[str, str] = {}
        self.records: list[Record] = []
        self.jwks_fetches: list[tuple[str, str | None]] = []
        self._used: set[tuple[str, Any, str]] = set()
        self._lock = threading.Lock()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.register_grant(GatewayJWTBearerGrant)
        self.register_client_auth_method("private_key_jwt", ClientAssertionAuth(self))
        self.register_client_auth_method("tls_client_auth", authenticate_tls_client)
        self.register_token_generator("default", self._generate_token)

    # -- registration ----------------------------------------------------------------------------

    def register(self, client: RegisteredClient) -> RegisteredClient:
        self.clients[client.client_id] = client
        return client

    def trust_issuer(self, issuer: str, jwks_uri: str) -> None:
        """Trust assertions from `issuer`, verified with the JWKS fetched from `jwks_uri` on every request."""
        self.trusted_issuers[issuer] = jwks_uri

    # -- what Authlib asks of the server ---------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def issuer(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/realms/camara"

    @property
    def token_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{TOKEN_PATH}"

    def audiences(self) -> list[str]:
        return [self.token_url, self.issuer, *self.extra_audiences]

    def query_client(self, client_id: str) -> RegisteredClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: _Request) -> None:
        return None

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def first_use(self, key: tuple[str, Any, str]) -> bool:
        with self._lock:
            if key in self._used:
                return False
            self._used.add(key)
            return True

    def assertion_keys(self, issuer: Any, client: RegisteredClient) -> KeySet | None:
        """Keys for a jwt-bearer assertion from `issuer`: a trusted issuer's JWKS, or the client's own keys."""
        if isinstance(issuer, str) and issuer in self.trusted_issuers:
            return fetch_jwks(self.trusted_issuers[issuer], self)
        if issuer == client.client_id and client.assertion_jwks is not None:
            return KeySet.import_key_set(cast(KeySetSerialization, client.assertion_jwks))
        return None

    def _generate_token(
        self,
        grant_type: str,
        client: RegisteredClient,
        user: str | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        token: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": expires_in or 300,
        }
        if scope:
            token["scope"] = scope
        # Some ASes (Keycloak among them) answer a jwt-bearer grant with a refresh token.
        if self.issue_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(24)
        return token

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, headers

    # -- HTTP --------------------------------------------------------------------------------------

    def _token_sync(self, request: _Request) -> tuple[int, Any, list[tuple[str, str]]]:
        try:
            status, body, headers = self.create_token_response(request)
        except OAuth2Error as error:  # raised outside a grant, e.g. by client authentication lookups
            status, body, headers = self.handle_error_response(request, error)
        record = request.record
        record.status = status
        if isinstance(body, dict):
            record.error = body.get("error")
            record.error_description = body.get("error_description")
        return status, body, headers

    async def _token(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        form = dict(parse_qsl(body, keep_blank_values=True))
        redacted = {k: ("<redacted>" if k == "client_secret" else v) for k, v in form.items()}
        peername = request.transport.get_extra_info("peername") if request.transport else None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        certificate = x509.load_der_x509_certificate(der) if der else None
        record = Record(
            form=redacted,
            basic_auth="Authorization" in request.headers,
            peer_subject=certificate.subject.rfc4514_string() if certificate is not None else None,
            peer_port=peername[1] if peername else None,
        )
        self.records.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        oauth_request = _Request(request.method, str(request.url), request.headers, form, certificate, record)
        # Authlib is synchronous and may fetch the gateway's JWKS over HTTP: keep the event loop free.
        status, document, headers = await asyncio.to_thread(self._token_sync, oauth_request)
        record.response_body = json.dumps(document).encode()
        return web.Response(status=status, body=record.response_body, headers=dict(headers))

    async def start(self) -> AuthlibAS:
        app = web.Application()
        app.router.add_post(TOKEN_PATH, self._token)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def last(self) -> Record:
        return self.records[-1]
