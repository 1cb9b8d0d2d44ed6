"""Request smuggling and HTTP/1.1 conformance, over raw sockets, against both main-listener engines.

Every case is sent to a gateway on aiohttp's listener and to one on the lean listener (server/http1.py).
A case is *refused* when no request reached the AS, at most one answer came back, and that answer (if
any) is an error. The rule: whatever aiohttp refuses, the lean listener refuses too; and the lean
listener refuses every framing ambiguity on the issue's list (CL + TE, duplicate Content-Length and
Host, obs-fold, ...) whatever aiohttp does. A well-formed baseline must be served by both, so that
"refused" cannot pass by refusing everything.

The listener-level behaviours (Expect: 100-continue, chunked caps, TLS, drain, max_concurrent_requests,
X-Forwarded-For lines, pipelining, deadlines) follow, each for both engines."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp
import pytest

from tests.support.gateway import TOKEN_PATH, base_config
from tests.support.hostile import http_exchange, read_response, status_codes
from tests.support.tls import TestCA

ENGINES = ("aiohttp", "lean")
BODY = b"grant_type=client_credentials&scope=a"
LIMITS = {"read_timeout": "500ms", "keepalive_timeout": "300ms", "max_body_bytes": 1024, "max_assertion_bytes": 512}
FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


def req(headers: str = "", body: bytes = BODY, *, start: str = f"POST {TOKEN_PATH} HTTP/1.1", host: bool = True,
        length: bool = True, sep: str = "\r\n") -> bytes:
    """A request: `headers` are extra header lines (each ending in CRLF) placed after Host/Content-Type."""
    head = start + sep + ("Host: gw" + sep if host else "") + FORM.replace("\r\n", sep) + headers
    if length:
        head += f"Content-Length: {len(body)}" + sep
    return (head + sep).encode("latin-1") + body


CHUNKED = "Transfer-Encoding: chunked\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"


def chunked(body: bytes, te: str = CHUNKED, extra: str = "") -> bytes:
    return req(te + extra, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), length=False)


# Served by both engines: the rule below would be empty if these were refused.
BASELINE = {
    "baseline": req(),
    "baseline-chunked": chunked(BODY),
    "baseline-http10": req(start=f"POST {TOKEN_PATH} HTTP/1.0", host=False),
    "baseline-chunk-extension": req(CHUNKED, b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY), length=False),
    "baseline-trailer": req(CHUNKED, b"%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(BODY), BODY), length=False),
    "baseline-absolute-form": req(start=f"POST http://gw{TOKEN_PATH} HTTP/1.1"),
    "baseline-expect-continue": req("Expect: 100-continue\r\n"),
}

# Framing ambiguities the lean listener must refuse (issue 11 item 3), each followed by a smuggled request.
MUST_REFUSE = {
    "cl-and-te": req(CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY) + SMUGGLED),
    "te-and-cl": req(CHUNKED + f"Content-Length: {len(BODY)}\r\n", b"0\r\n\r\n" + SMUGGLED, length=False),
    "duplicate-cl-same": req(f"Content-Length: {len(BODY)}\r\n", BODY + SMUGGLED),
    "duplicate-cl-different": req("Content-Length: 5\r\n", BODY + SMUGGLED),
    "duplicate-host": req("Host: other\r\n"),
    "missing-host-http11": req(host=False),
    "obs-fold": req("X-Folded: a\r\n b\r\n"),
    "obs-fold-content-length": req(f"Content-Length:\r\n {len(BODY)}\r\n", BODY + SMUGGLED, length=False),
    "te-gzip-chunked": chunked(BODY, "Transfer-Encoding: gzip, chunked\r\n"),
    "te-chunked-gzip": chunked(BODY, "Transfer-Encoding: chunked, gzip\r\n"),
    "te-identity": req("Transfer-Encoding: identity\r\n", BODY, length=False),
    "te-xchunked": chunked(BODY, "Transfer-Encoding: xchunked\r\n"),
    "te-two-lines": chunked(BODY, CHUNKED + CHUNKED),
    "te-space-before-colon": chunked(BODY, "Transfer-Encoding : chunked\r\n"),
    "cl-space-before-colon": req(f"Content-Length : {len(BODY)}\r\n", BODY, length=False),
    "cl-plus": req(f"Content-Length: +{len(BODY)}\r\n", BODY, length=False),
    "cl-negative": req("Content-Length: -1\r\n", BODY, length=False),
    "cl-hex": req(f"Content-Length: 0x{len(BODY):x}\r\n", BODY, length=False),
    "cl-comma-list": req(f"Content-Length: {len(BODY)}, {len(BODY)}\r\n", BODY, length=False),
    "cl-inner-space": req("Content-Length: 3 7\r\n", BODY, length=False),
    "bare-lf": req(sep="\n"),
    "bare-cr-in-header": req("X-A: a\rb\r\n"),
    "nul-in-header": req("X-A: a\x00b\r\n"),
    "ctl-in-header": req("X-A: \x17\r\n"),
    "space-in-header-name": req("X A: 1\r\n"),
    "header-without-colon": req("X-A\r\n"),
    "http-2.0": req(start=f"POST {TOKEN_PATH} HTTP/2.0"),
    "http-1.2": req(start=f"POST {TOKEN_PATH} HTTP/1.2"),
    "lowercase-version": req(start=f"POST {TOKEN_PATH} http/1.1"),
    "space-in-target": req(start="POST /oauth2/ token HTTP/1.1"),
    "chunk-size-hex-prefix": req(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n", length=False),
    "chunk-size-negative": req(CHUNKED, b"-5\r\nhello\r\n0\r\n\r\n", length=False),
    "chunk-size-overflow": req(CHUNKED, b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n", length=False),
    "chunk-size-space": req(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n", length=False),
    "chunk-data-overrun": req(CHUNKED, b"5\r\nhelloXX\r\n0\r\n\r\n" + SMUGGLED, length=False),
    "chunk-lf-only": req(CHUNKED, b"5\nhello\n0\n\n", length=False),
    "te-in-http10": req(CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY), start=f"POST {TOKEN_PATH} HTTP/1.0",
                        length=False),
    "expect-unknown": req("Expect: 200-ok\r\n"),
    "content-encoding-gzip": req("Content-Encoding: gzip\r\n"),
    "oversize-declared": req("", b"x" * 2000),
    "oversize-chunked": req(CHUNKED, b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n",
                            length=False),
    "upgrade-h2c": req("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
    "connect": b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}

# Odd but not ambiguous: whatever aiohttp refuses here the lean listener must refuse too.
OTHER = {
    "pipelined-after-body": req("", BODY + SMUGGLED),
    "header-value-obs-text": req("X-A: caf\xe9\r\n"),
    "tab-before-value": req("X-A:\t1\r\n"),
    "trailing-space-value": req("X-A: 1 \r\n"),
    "encoded-token-path": req(start="POST /oauth2/%74oken HTTP/1.1"),
    "dot-segment-path": req(start="POST /oauth2/../oauth2/token HTTP/1.1"),
    "fragment-in-target": req(start=f"POST {TOKEN_PATH}#frag HTTP/1.1"),
    "query-on-token-path": req(start=f"POST {TOKEN_PATH}?a=b HTTP/1.1"),
    "asterisk-target": b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n",
    "unknown-method": req(start=f"BREW {TOKEN_PATH} HTTP/1.1"),
    "lowercase-method": req(start=f"post {TOKEN_PATH} HTTP/1.1"),
    "trailer-content-length": req(CHUNKED, b"%x\r\n%s\r\n0\r\nContent-Length: 5\r\n\r\n" % (len(BODY), BODY),
                                  length=False),
    "long-chunk-extension": req(CHUNKED, b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(BODY), b"e" * 5000, BODY), length=False),
    "upgrade-websocket": req("Connection: Upgrade\r\nUpgrade: websocket\r\n"),
    "connection-close-then-more": req("Connection: close\r\n", BODY + SMUGGLED),
    "double-space-request-line": req(start=f"POST  {TOKEN_PATH} HTTP/1.1"),
    "http10-keep-alive": req("Connection: keep-alive\r\n", start=f"POST {TOKEN_PATH} HTTP/1.0", host=False),
}

CASES = {**BASELINE, **MUST_REFUSE, **OTHER}


@dataclass
class Verdict:
    codes: list[int]
    reached_as: int

    @property
    def refused(self) -> bool:
        return self.reached_as == 0 and len(self.codes) <= 1 and all(code >= 400 for code in self.codes)

    @property
    def served(self) -> bool:
        return self.reached_as >= 1 and self.codes[-1:] == [200]


async def send(engine: str, raw: bytes, upstream, gateway_factory, **sections) -> Verdict:
    config = base_config(upstream.token_url, listen={"host": "127.0.0.1", "port": 0, "engine": engine},
                         limits=LIMITS, **sections)
    gw = await gateway_factory(config, name=f"{engine}.yaml")
    before = len(upstream.seen)
    # Read until the gateway closes: after a refusal, or keepalive_timeout after the last answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.main_port)
    try:
        writer.write(raw)
        chunks = []
        try:
            async with asyncio.timeout(3.0):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except (TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()
    codes = [code for code in status_codes(b"".join(chunks)) if code != 100]
    return Verdict(codes, len(upstream.seen) - before)


@pytest.mark.parametrize("case", list(CASES))
async def test_lean_refuses_what_aiohttp_refuses(case, upstream, gateway_factory):
    raw = CASES[case]
    reference = await send("aiohttp", raw, upstream, gateway_factory)
    lean = await send("lean", raw, upstream, gateway_factory)  # one after the other: `reached_as` counts
    if case in BASELINE:
        assert reference.served and lean.served, (reference, lean)
    if reference.refused:
        assert lean.refused, (reference, lean)
    if case in MUST_REFUSE:
        assert lean.refused, lean
    # Never more requests seen by the AS, or more answers, than aiohttp's reading of the same bytes.
    assert lean.reached_as <= max(reference.reached_as, 1 if case in BASELINE or case in OTHER else 0)
    assert len(lean.codes) <= max(len(reference.codes), 1)


# Listener behaviours, each on both engines -----------------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


async def gateway_on(engine, upstream, gateway_factory, **sections):
    limits = {**LIMITS, **sections.pop("limits", {})}
    listen = {"host": "127.0.0.1", "port": 0, "engine": engine, **sections.pop("listen", {})}
    return await gateway_factory(base_config(upstream.token_url, listen=listen, limits=limits, **sections))


def head_only(extra: str, length: int) -> bytes:
    return req(extra + f"Content-Length: {length}\r\n", b"", length=False)


async def test_expect_continue_then_body(engine, upstream, gateway_factory):
    gw = await gateway_on(engine, upstream, gateway_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.main_port)
    try:
        writer.write(head_only("Expect: 100-continue\r\n", len(BODY)))  # the body waits for 100
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        assert await asyncio.wait_for(read_response(reader), 2.0) == 200
    finally:
        writer.close()
    assert upstream.seen[-1].body == BODY


async def test_expect_continue_refused_head_gets_its_final_answer(engine, upstream, gateway_factory):
    """A head refused as it stands (a declared oversize body) gets 413 without sending the body; the
    lean listener does not invite the body with a 100 first (aiohttp does)."""
    gw = await gateway_on(engine, upstream, gateway_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.main_port)
    try:
        writer.write(head_only("Expect: 100-continue\r\n", 5000))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        if engine == "aiohttp" and head == b"HTTP/1.1 100 Continue\r\n\r\n":
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert upstream.seen == []


async def test_chunked_body_over_the_cap_is_413(engine, upstream, gateway_factory):
    gw = await gateway_on(engine, upstream, gateway_factory)
    answer = await http_exchange(gw.gateway.main_port, MUST_REFUSE["oversize-chunked"], timeout=2.0)
    assert status_codes(answer) == [413]
    assert upstream.seen == []


async def test_every_x_forwarded_for_line_counts(engine, upstream, gateway_factory):
    gw = await gateway_on(engine, upstream, gateway_factory, listen={"trusted_proxies": ["127.0.0.0/8"]})
    raw = req("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.1.1.1, 127.0.0.2\r\nConnection: close\r\n")
    assert status_codes(await http_exchange(gw.gateway.main_port, raw)) == [200]
    seen = upstream.seen[-1].headers["X-Forwarded-For"]
    assert seen == "203.0.113.7, 10.1.1.1, 127.0.0.2, 127.0.0.1"


async def test_untrusted_peer_forwarded_for_is_replaced(engine, upstream, gateway_factory):
    gw = await gateway_on(engine, upstream, gateway_factory, listen={"trusted_proxies": ["10.0.0.0/8"]})
    raw = req("X-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n")
    assert status_codes(await http_exchange(gw.gateway.main_port, raw)) == [200]
    assert upstream.seen[-1].headers["X-Forwarded-For"] == "127.0.0.1"


async def test_max_concurrent_requests(engine, upstream, gateway_factory):
    upstream.delay = 0.5
    gw = await gateway_on(engine, upstream, gateway_factory, limits={"max_concurrent_requests": 1})
    raw = req("Connection: close\r\n")
    first = asyncio.ensure_future(http_exchange(gw.gateway.main_port, raw))
    await asyncio.sleep(0.2)
    second = await http_exchange(gw.gateway.main_port, raw)
    assert status_codes(second) == [503]
    assert b"Retry-After: 1" in second
    assert status_codes(await first) == [200]


async def test_pipelined_requests_answered_in_order(engine, upstream, gateway_factory):
    gw = await gateway_on(engine, upstream, gateway_factory)
    wrong = req(start=f"GET {TOKEN_PATH} HTTP/1.1", body=b"", length=False)
    raw = (req() + wrong + b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n") * 40 + req("Connection: close\r\n")
    codes = status_codes(await http_exchange(gw.gateway.main_port, raw, timeout=5.0))
    assert codes == [200, 405, 404] * 40 + [200]


async def test_tls_listener(engine, upstream, gateway_factory, tmp_path):
    ca = TestCA(tmp_path / "pki")
    server = ca.server()
    gw = await gateway_on(engine, upstream, gateway_factory,
                          listen={"tls": {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}})
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{gw.gateway.main_port}{TOKEN_PATH}"
        async with session.post(url, data=BODY, headers={"Content-Type": "application/x-www-form-urlencoded"},
                                ssl=context) as response:
            assert response.status == 200
    assert upstream.seen[-1].headers["X-Forwarded-Proto"] == "https"
    # Plain HTTP to the TLS port gets no HTTP answer.
    answer = await http_exchange(gw.gateway.main_port, req("Connection: close\r\n"), timeout=2.0)
    assert not answer.startswith(b"HTTP/1.1 200")


async def test_drain_on_stop_finishes_in_flight_requests(engine, upstream, gateway_factory):
    upstream.delay = 0.5
    gw = await gateway_on(engine, upstream, gateway_factory)
    port = gw.gateway.main_port
    in_flight = asyncio.ensure_future(http_exchange(port, req("Connection: close\r\n")))
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    stopping = asyncio.ensure_future(gw.gateway.stop())
    await asyncio.sleep(0.1)
    # New connections are refused while draining; the idle one is closed.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(idle_reader.read(), 1.0) == b""
    idle_writer.close()
    assert status_codes(await in_flight) == [200]
    await stopping
    assert time.monotonic() - started < 3.0


async def test_peer_that_does_not_read_its_answers_is_cut_off(upstream, gateway_factory):
    """Lean listener: pipelined requests from a peer that never reads. Once the answers back up, no
    more is handled for it, and it is closed at keepalive_timeout (300 ms here) unless it reads."""
    import socket

    gw = await gateway_on("lean", upstream, gateway_factory)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", gw.gateway.main_port))
    flood = b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n" * 20000
    closed = False
    started = time.monotonic()
    try:
        sent = 0
        while sent < len(flood) and time.monotonic() - started < 5.0:
            try:
                sent += sock.send(flood[sent:sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # reading nothing
        while await asyncio.wait_for(loop.sock_recv(sock, 65536), 3.0):  # a TimeoutError fails the test
            pass
        closed = True  # EOF
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        sock.close()
    assert closed and time.monotonic() - started < 8.0
    # Everyone else is still served.
    assert status_codes(await http_exchange(gw.gateway.main_port, req("Connection: close\r\n"))) == [200]
