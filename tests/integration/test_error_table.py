"""The design's error table, row by row, under both error profiles."""

from __future__ import annotations

import socket

import pytest

from tests.integration.test_pipeline import ES, NO_GRANT, OTHER, clients, form, now, raw_jwt, signed
from tests.support.gateway import AUDIENCE, base_config
from tests.support.upstream import RecordingUpstream

# row: (request builder, implicit-client-auth answer, rfc7523 answer)
ROWS = {
    "body too large": (lambda: b"grant_type=x&pad=" + b"a" * 9000, (413, "invalid_request"), (413, "invalid_request")),
    "repeated parameter": (lambda: b"grant_type=a&grant_type=b", (400, "invalid_request"), (400, "invalid_request")),
    "scope parameter": (lambda: form(ES.assertion(), scope="x"), (400, "invalid_request"), (400, "invalid_request")),
    "more than one client authentication": (
        lambda: form(ES.assertion(), client_secret="s"), (400, "invalid_request"), (400, "invalid_request")),
    "grant type denied": (lambda: {"grant_type": "password"}, (400, "unsupported_grant_type"),
                          (400, "unsupported_grant_type")),
    "malformed JWT": (lambda: form("x.y"), (400, "invalid_grant"), (400, "invalid_grant")),
    "forbidden alg": (lambda: form(raw_jwt({"alg": "none"}, {}, b"x")), (400, "invalid_grant"), (400, "invalid_grant")),
    "unknown iss": (lambda: form(signed(OTHER, iss="nobody")), (401, "invalid_client"), (400, "invalid_grant")),
    "bad signature": (lambda: form(signed(OTHER, iss=ES.client_id)), (401, "invalid_client"), (400, "invalid_grant")),
    "client not allowed this grant": (lambda: form(NO_GRANT.assertion()), (400, "unauthorized_client"),
                                      (400, "unauthorized_client")),
    "time window": (lambda: form(signed(ES, iat=now() - 400, exp=now() - 100)), (400, "invalid_grant"),
                    (400, "invalid_grant")),
    "aud": (lambda: form(signed(ES, aud="https://elsewhere")), (400, "invalid_grant"), (400, "invalid_grant")),
}


@pytest.mark.parametrize("profile", ["implicit-client-auth", "rfc7523"])
async def test_rows(upstream, gateway_factory, profile):
    gw = await gateway_factory(base_config(
        upstream.token_url, clients=clients(), passthrough={"other_grants": "deny"},
        profile={"audiences": [AUDIENCE], "errors": profile},
    ))
    for row, (build, implicit, strict) in ROWS.items():
        status, document, headers = await gw.post_form(build())
        expected = implicit if profile == "implicit-client-auth" else strict
        assert (status, document.get("error")) == expected, row
        assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache", row
        assert set(document) == {"error", "error_description"}, row
    assert upstream.seen == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("profile", ["implicit-client-auth", "rfc7523"])
async def test_as_unreachable_row(gateway_factory, profile):
    url = f"http://127.0.0.1:{_closed_port()}/token"
    gw = await gateway_factory(base_config(url, clients=clients(), profile={"audiences": [AUDIENCE], "errors": profile}))
    status, document, headers = await gw.token(ES.assertion())
    assert (status, document["error"]) == (503, "temporarily_unavailable")
    assert "Retry-After" in headers


@pytest.mark.parametrize("profile", ["implicit-client-auth", "rfc7523"])
async def test_as_timeout_row(gateway_factory, profile):
    slow = await RecordingUpstream(delay=3).start()
    try:
        config = base_config(slow.token_url, clients=clients(), profile={"audiences": [AUDIENCE], "errors": profile})
        config["upstream"]["timeouts"] = {"connect": "1s", "total": "500ms"}
        gw = await gateway_factory(config)
        status, document, _ = await gw.token(ES.assertion())
        assert (status, document["error"]) == (504, "temporarily_unavailable")
        assert len(slow.seen) == 1
    finally:
        await slow.stop()


@pytest.mark.parametrize("profile", ["implicit-client-auth", "rfc7523"])
@pytest.mark.parametrize("as_error", ["invalid_client", "unauthorized_client"])
async def test_as_rejects_injected_credentials_row(upstream, gateway_factory, profile, as_error, monkeypatch):
    monkeypatch.setenv("ACME_SECRET", "wrong-secret")
    entries = clients()
    entries[0]["upstream"] = {"client_auth": {"method": "client_secret_basic", "secret": "${ACME_SECRET}"}}
    gw = await gateway_factory(base_config(upstream.token_url, clients=entries,
                                           profile={"audiences": [AUDIENCE], "errors": profile}))
    upstream.answer_json(401, {"error": as_error, "error_description": "Invalid client or Invalid client credentials"})
    status, document, _ = await gw.token(ES.assertion())
    assert (status, document["error"]) == (502, "server_error")
    assert "credentials" not in document["error_description"]
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'bearer_gateway_upstream_credential_rejections_total{client="acme-es"}' in text


async def test_other_as_errors_pass_through(upstream, gateway_factory):
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients()))
    upstream.answer_json(400, {"error": "invalid_grant", "error_description": "User not found"})
    status, document, _ = await gw.token(ES.assertion())
    assert (status, document) == (400, {"error": "invalid_grant", "error_description": "User not found"})


async def test_refresh_token_dropped(upstream, gateway_factory):
    upstream.answer_json(200, {"access_token": "a", "token_type": "Bearer", "refresh_token": "r", "expires_in": 60})
    gw = await gateway_factory(base_config(upstream.token_url, clients=clients()))
    status, document, _ = await gw.token(ES.assertion())
    assert status == 200 and "refresh_token" not in document and document["access_token"] == "a"
