"""Stage size for the aiohttp listener: a body read with the cap and the read deadline.

(The lean listener, server/http1.py, enforces the same cap and deadline while it parses.)"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.config.model import Limits
from gateway.errors import Reason, Rejection


async def read_body(request: web.Request, limits: Limits) -> bytes | Rejection:
    """Refuse a declared oversize body unread; read any body with the same cap and a deadline."""
    cap = limits.max_body_bytes
    if request.content_length is not None and request.content_length > cap:
        return Rejection(Reason.BODY_TOO_LARGE, "size")
    if request.content.is_eof():
        # The whole body came with the headers (the usual token request): take it, no deadline to arm.
        body = request.content.read_nowait()
        return Rejection(Reason.BODY_TOO_LARGE, "size") if len(body) > cap else body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout):
            while True:
                chunk = await request.content.read(cap + 1 - size)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    return Rejection(Reason.BODY_TOO_LARGE, "size")
                chunks.append(chunk)
    except TimeoutError:
        return Rejection(Reason.BODY_READ_TIMEOUT, "connection")
    return b"".join(chunks)
