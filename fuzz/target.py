"""The fuzz target: the real gateway listener on a loopback socket, fed the fuzzer's bytes.

One input is one of four shapes (its first byte chooses), so the fuzzer reaches both the HTTP
listener and the deep checks:
  0: raw bytes on the connection (request line, headers, framing, body: the listener's input);
  1: the bytes as the body of a well-formed token POST (form parser onwards);
  2: a jwt-bearer request whose assertion is built from the bytes: JSON header and payload taken
     from the data, base64url-encoded, plus a signature (assertion shape, header policy, claims,
     issuer, guard, decoy/real signature check);
  3: the bytes as the claims of an assertion correctly signed by the configured client, so that what
     follows the signature (admission, the upstream guard, the request builder) sees them too.
The oracle: every answer is a complete HTTP response whose status is in the error table (never a
5xx from the gateway itself), and the gateway logs no internal error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
import time
from pathlib import Path

import yaml

TOKEN_PATH = "/oauth2/token"
AUDIENCE = "https://gateway.fuzz/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Statuses the gateway may answer (README error table) plus what the HTTP parser sends for bad framing.
ALLOWED = {400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 417, 429, 431, 501, 503, 505}


class InternalErrorSeen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Target:
    """A started gateway and a function that sends one input and checks the answer."""

    def __init__(self) -> None:
        from gateway.config import load_config
        from gateway.jose.signing import generate_private_key_pem, load_signing_key
        from gateway.server.app import Gateway

        self.loop = asyncio.new_event_loop()
        key = load_signing_key(generate_private_key_pem("ES256"), alg="ES256", kid="fuzz-kid", source="fuzz")
        self.signer = key
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "token_paths": [TOKEN_PATH],
            # Nothing listens there: nothing the fuzzer sends may reach an AS anyway.
            "upstream": {"token_url": "http://127.0.0.1:9/token", "timeouts": {"connect": "200ms", "total": "500ms"}},
            "passthrough": {"other_grants": "deny", "other_paths": "deny"},
            "profile": {"audiences": [AUDIENCE]},
            "limits": {"read_timeout": "200ms", "keepalive_timeout": "1s"},
            "rate_limits": {"per_ip": None, "per_issuer_unverified": None, "per_client": None, "global": None},
            "logging": {"audit": False},
            "clients": [{"client_id": "fuzz-client", "keys": {"jwks": {"keys": [key.public_jwk()]}}}],
        }
        self.directory = tempfile.mkdtemp(prefix="bearer-gateway-fuzz-")
        path = Path(self.directory) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        self.gateway = Gateway(load_config(path), str(path))
        self.loop.run_until_complete(self.gateway.start(admin=False))
        self.port = self.gateway.main_port
        self.errors = InternalErrorSeen()
        logging.getLogger("bearer_gateway").addHandler(self.errors)

    def close(self) -> None:
        self.loop.run_until_complete(self.gateway.stop())
        self.loop.close()

    def request_bytes(self, data: bytes) -> bytes:
        if not data:
            return b""
        shape, rest = data[0] % 4, data[1:]
        if shape == 0:
            return rest
        if shape == 1:
            body = rest
        elif shape == 3:
            from gateway.jose.keys import ALGORITHM_OBJECTS

            # NOW and LATER stand for the current time and a minute later, so dates can be current.
            now = int(time.time())
            claims = rest.replace(b"LATER", str(now + 60).encode()).replace(b"NOW", str(now).encode())
            signing_input = b64(b'{"alg":"ES256","kid":"fuzz-kid"}') + b"." + b64(claims)
            signature = ALGORITHM_OBJECTS["ES256"].sign(signing_input, self.signer.key)
            body = b"grant_type=" + JWT_BEARER.encode() + b"&assertion=" + signing_input + b"." + b64(signature)
        else:
            cut = rest[0] if rest else 0
            header, payload = rest[1 : 1 + cut], rest[1 + cut :]
            assertion = b".".join((b64(header), b64(payload), b64(b"s" * 64)))
            body = b"grant_type=" + JWT_BEARER.encode() + b"&assertion=" + assertion
        head = (
            f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        return head + body

    async def _exchange(self, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            writer.write_eof()
            chunks = []
            async with asyncio.timeout(2.0):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
            return b"".join(chunks)
        finally:
            writer.close()

    def one(self, data: bytes) -> None:
        """Send one input; AssertionError when the gateway misbehaves."""
        raw = self.request_bytes(data)
        if not raw:
            return
        answer = self.loop.run_until_complete(self._exchange(raw))
        if self.errors.records:
            record = self.errors.records[0]
            self.errors.records.clear()
            raise AssertionError(f"gateway logged an error: {record.getMessage()}")
        if not answer:
            return  # the listener closed without answering (e.g. nothing parseable): fine
        assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:80]
        status = int(answer[9:12])
        assert status in ALLOWED, (status, answer[:300])
