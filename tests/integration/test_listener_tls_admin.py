"""Issue 13 items 8, 10, 11 and the item 7 gauges, over real sockets: readiness that survives the AS
going down (cached probe), /metrics behind a bearer token or client certificates, listener TLS
(protocol floor, ciphers, mTLS callers, certificate re-read on reload), and the gauges behind the
new alerts (certificate expiry, replay-set fill, last successful reload)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml
from cryptography import x509

from tests.integration.test_run_and_reload import free_port
from tests.support.gateway import base_config, metric_value
from tests.support.keys import client_entry, client_key
from tests.support.tls import TestCA

KEY = client_key("tls-app")
FORM = {"grant_type": "client_credentials"}
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def client_context(pki: TestCA, *, cert=None, max_version=None, ciphers=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.cert_file))
    if cert is not None:
        context.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    if max_version is not None:
        context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def handshake(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """A TLS connection to the listener and one HTTP exchange; the server certificate it presented."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"POST /oauth2/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 29\r\nConnection: close\r\n\r\ngrant_type=client_credentials")
        await writer.drain()
        answer = await reader.read()
        if not answer:
            raise ssl.SSLError("connection closed without an answer")  # TLS 1.3: client cert refused after handshake
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        await handshake(port, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return False


# Item 8: readiness.

async def test_readyz_survives_an_unreachable_as_by_default(gateway_factory):
    dead = f"http://127.0.0.1:{free_port()}/token"
    gw = await gateway_factory(base_config(dead))
    async with gw.session.get(gw.admin_url + "/readyz") as response:
        document = await response.json()
        assert response.status == 200
        assert document["checks"]["upstream"] is False and document["upstream_required"] is False


async def test_readyz_can_require_the_as(gateway_factory):
    dead = f"http://127.0.0.1:{free_port()}/token"
    gw = await gateway_factory(base_config(dead, admin={"readiness": {"require_upstream": True}}))
    async with gw.session.get(gw.admin_url + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["checks"]["upstream"] is False


async def test_upstream_probe_is_cached(upstream, gateway_factory):
    gw = await gateway_factory(
        base_config(upstream.token_url, admin={"readiness": {"upstream_probe_interval": "400ms"}})
    )
    for _ in range(10):
        async with gw.session.get(gw.admin_url + "/readyz") as response:
            assert response.status == 200
    assert [s.method for s in upstream.seen] == ["HEAD"]  # ten probes, one request to the AS
    await asyncio.sleep(0.5)
    async with gw.session.get(gw.admin_url + "/readyz") as response:
        assert response.status == 200
    assert [s.method for s in upstream.seen] == ["HEAD", "HEAD"]


# Item 10: admin protection.

async def test_metrics_bearer_token(upstream, gateway_factory, monkeypatch):
    monkeypatch.setenv("METRICS_TOKEN", "scrape-token-1")
    gw = await gateway_factory(base_config(upstream.token_url, admin={"metrics_token": "${METRICS_TOKEN}"}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-token-1"}):
        async with gw.session.get(gw.admin_url + "/metrics", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
            assert "bearer_gateway" not in await response.text()
    async with gw.session.get(gw.admin_url + "/metrics", headers={"Authorization": "Bearer scrape-token-1"}) as r:
        assert r.status == 200 and "bearer_gateway_requests_total" in await r.text()
    for path in ("/healthz", "/readyz"):  # probes stay open
        async with gw.session.get(gw.admin_url + path) as response:
            assert response.status == 200


async def test_metrics_client_certificates(upstream, gateway_factory, pki):
    server = pki.server()
    scraper = pki.client("prometheus")
    stranger = TestCA(pki.directory.parent / "other").client("prometheus")
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file), "client_ca_file": str(pki.cert_file)}
    gw = await gateway_factory(base_config(upstream.token_url, admin={"tls": tls}))
    url = f"https://127.0.0.1:{gw.gateway.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics", ssl=client_context(pki, cert=scraper)) as response:
            assert response.status == 200 and "bearer_gateway_build_info" in await response.text()
        async with session.get(url + "/metrics", ssl=client_context(pki)) as response:
            assert response.status == 401  # no certificate
        async with session.get(url + "/readyz", ssl=client_context(pki)) as response:
            assert response.status == 200  # probes need none
        with pytest.raises(aiohttp.ClientError):  # a certificate from another CA fails the handshake
            async with session.get(url + "/metrics", ssl=client_context(pki, cert=stranger)) as response:
                await response.read()


@pytest.mark.parametrize("name", ["config/gateway.example.yaml", "config/demo.yaml", "config/demo-hydra.yaml"])
def test_shipped_configs_bind_admin_to_localhost(name):
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / name).read_text())
    assert config.get("admin", {}).get("host", "127.0.0.1") == "127.0.0.1"


# Item 11: listener TLS.

def _tls(server, **extra) -> dict:
    return {"cert_file": str(server.cert_file), "key_file": str(server.key_file), **extra}


async def test_minimum_version(upstream, gateway_factory, pki):
    gw = await gateway_factory(base_config(upstream.token_url, listen={"tls": _tls(pki.server(), min_version="TLSv1.3")}))
    port = gw.gateway.main_port
    assert await refused(port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    assert not await refused(port, client_context(pki))


async def test_ciphers(upstream, gateway_factory, pki):
    tls = _tls(pki.server(), ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    gw = await gateway_factory(base_config(upstream.token_url, listen={"tls": tls}))
    port = gw.gateway.main_port
    tls12 = ssl.TLSVersion.TLSv1_2
    assert await refused(port, client_context(pki, max_version=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert not await refused(port, client_context(pki, max_version=tls12, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))


async def test_client_certificates_required(upstream, gateway_factory, pki):
    tls = _tls(pki.server(), client_ca_file=str(pki.cert_file))
    gw = await gateway_factory(base_config(upstream.token_url, listen={"tls": tls}))
    port = gw.gateway.main_port
    assert await refused(port, client_context(pki))
    assert not await refused(port, client_context(pki, cert=pki.client("caller")))


async def test_certificate_reloaded_without_restart(upstream, gateway_factory, pki, tmp_path):
    first = pki.server(days=30)
    config = base_config(upstream.token_url, listen={"tls": _tls(first)})
    gw = await gateway_factory(config)
    port = gw.gateway.main_port
    served = await handshake(port, client_context(pki))
    assert served.serial_number == first.certificate.serial_number

    async def expiry() -> float:
        async with gw.session.get(gw.admin_url + "/metrics") as response:
            text = await response.text()
        return metric_value(text, 'bearer_gateway_certificate_expiry_timestamp_seconds{certificate="listen"}')

    assert await expiry() == first.certificate.not_valid_after_utc.timestamp()

    # A renewed certificate in the same files: the reload (what SIGHUP runs) puts it in the running listener.
    renewed = pki.server(days=90)
    assert await gw.gateway.reload()
    served = await handshake(port, client_context(pki))
    assert served.serial_number == renewed.certificate.serial_number != first.certificate.serial_number
    assert await expiry() == renewed.certificate.not_valid_after_utc.timestamp()

    # A broken certificate file is refused; the renewed one keeps being served.
    Path(renewed.cert_file).write_text("not a certificate")
    assert not await gw.gateway.reload()
    served = await handshake(port, client_context(pki))
    assert served.serial_number == renewed.certificate.serial_number


# Item 7: the gauges behind the new alerts.

async def test_reload_and_replay_gauges(upstream, gateway_factory):
    config = base_config(upstream.token_url, clients=[client_entry(KEY)], state={"max_replay_entries": 1000})
    gw = await gateway_factory(config)

    async def scrape() -> str:
        async with gw.session.get(gw.admin_url + "/metrics") as response:
            return await response.text()

    text = await scrape()
    assert metric_value(text, "bearer_gateway_replay_set_capacity") == 1000
    assert metric_value(text, "bearer_gateway_replay_set_entries") == 0
    assert metric_value(text, "bearer_gateway_config_last_reload_successful") == 1
    loaded = metric_value(text, "bearer_gateway_config_last_reload_success_timestamp_seconds")
    assert loaded > 0
    for _ in range(3):
        assert (await gw.token(KEY.assertion()))[0] == 200
    assert metric_value(await scrape(), "bearer_gateway_replay_set_entries") == 3

    gw.path.write_text(yaml.safe_dump({**config, "limits": {"read_timeout": "0s"}}))
    assert not await gw.gateway.reload()
    text = await scrape()
    assert metric_value(text, "bearer_gateway_config_last_reload_successful") == 0
    assert metric_value(text, "bearer_gateway_config_last_reload_success_timestamp_seconds") == loaded
    await asyncio.sleep(1.1)
    gw.path.write_text(yaml.safe_dump(config))
    assert await gw.gateway.reload()
    text = await scrape()
    assert metric_value(text, "bearer_gateway_config_last_reload_successful") == 1
    assert metric_value(text, "bearer_gateway_config_last_reload_success_timestamp_seconds") > loaded
    assert metric_value(text, "bearer_gateway_replay_set_entries") == 3  # the replay set survived the reload


async def test_client_certificate_expiry_gauge(gateway_factory, pki):
    client = pki.client("acme-as-client")
    entry = client_entry(KEY, upstream={"client_auth": {"method": "tls_client_auth", "client_id": "tls-app",
                                                        "cert_file": str(client.cert_file),
                                                        "key_file": str(client.key_file)}})
    gw = await gateway_factory(base_config(f"https://127.0.0.1:{free_port()}/token", clients=[entry]))
    async with gw.session.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    sample = 'bearer_gateway_certificate_expiry_timestamp_seconds{certificate="client_auth:tls-app"}'
    assert metric_value(text, sample) == client.certificate.not_valid_after_utc.timestamp()
