"""Issue 11 item 5: the keep-alive HTTP/1.1 pool to the token URL (upstream/pool.py), against raw-socket
authorization servers: connections reused, a request never sent twice, idle connections the AS
closed never used, chunked and close-delimited answers read, answers over the cap refused."""

from __future__ import annotations

import asyncio

from tests.support.gateway import base_config
from tests.support.hostile import RawServer, read_request
from tests.support.keys import client_entry, client_key

KEY = client_key("pooled-app", "ES256")
TOKEN = b'{"access_token":"at","token_type":"Bearer","expires_in":60}'


def answer(body: bytes = TOKEN, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def gateway(gateway_factory, server: RawServer, **upstream):
    config = base_config(server.url(), clients=[client_entry(KEY)])
    config["upstream"].update(upstream)
    return await gateway_factory(config)


async def test_connection_reused_and_original_assertion_forwarded(gateway_factory):
    bodies: list[bytes] = []

    async def keep_alive(reader, writer):
        while True:
            _, body = await read_request(reader)
            bodies.append(body)
            writer.write(answer())

    server = await RawServer(keep_alive).start()
    try:
        gw = await gateway(gateway_factory, server)
        assertions = [KEY.assertion() for _ in range(3)]
        for assertion in assertions:
            assert (await gw.token(assertion))[0] == 200
        assert server.connections == 1  # one connection, three requests
        for body, assertion in zip(bodies, assertions, strict=True):
            assert f"&assertion={assertion}&".encode() in body + b"&"  # the caller's bytes, as they came
    finally:
        await server.stop()


async def test_request_is_never_sent_twice(gateway_factory):
    """The AS reads the request and drops the connection: 503, and it saw the request once."""
    seen: list[bytes] = []

    async def drop(reader, writer):
        _, body = await read_request(reader)
        seen.append(body)

    server = await RawServer(drop).start()
    try:
        gw = await gateway(gateway_factory, server)
        status, document, _ = await gw.token(KEY.assertion())
        assert (status, document["error"]) == (503, "temporarily_unavailable")
        await asyncio.sleep(0.2)
        assert len(seen) == 1
    finally:
        await server.stop()


async def test_idle_connection_closed_by_the_as_is_not_used(gateway_factory):
    async def once_then_close(reader, writer):
        await read_request(reader)
        writer.write(answer())  # keep-alive by default, but the AS closes right after
        await writer.drain()

    server = await RawServer(once_then_close).start()
    try:
        gw = await gateway(gateway_factory, server)
        assert (await gw.token(KEY.assertion()))[0] == 200
        await asyncio.sleep(0.2)  # the close reaches the gateway
        assert (await gw.token(KEY.assertion()))[0] == 200
        assert server.connections == 2
    finally:
        await server.stop()


async def test_chunked_and_close_delimited_answers(gateway_factory):
    async def chunked(reader, writer):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n0\r\n\r\n" % (len(TOKEN), TOKEN))

    async def until_close(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + TOKEN)
        await writer.drain()

    for handler in (chunked, until_close):
        server = await RawServer(handler).start()
        try:
            gw = await gateway(gateway_factory, server)
            for _ in range(2):
                status, document, _ = await gw.token(KEY.assertion())
                assert (status, document["access_token"]) == (200, "at"), handler.__name__
        finally:
            await server.stop()


async def test_answer_over_the_cap_is_a_bad_response(gateway_factory):
    async def huge(reader, writer):
        await read_request(reader)
        writer.write(answer(b"x" * 5000))

    server = await RawServer(huge).start()
    try:
        gw = await gateway(gateway_factory, server, max_response_bytes=1024)
        status, document, _ = await gw.token(KEY.assertion())
        assert (status, document["error"]) == (503, "temporarily_unavailable")
    finally:
        await server.stop()
