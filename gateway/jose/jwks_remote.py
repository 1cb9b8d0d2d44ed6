"""A client's remote JWKS (`jwks_uri`): cached, single-flight refresh, stale-if-error."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.jose.keys import KeyLoadError, KeySet, VerificationKey, keys_from_jwks
from gateway.redact import mask_userinfo

__all__ = ["RemoteJWKS", "RemoteJWKSSettings"]

logger = logging.getLogger("bearer_gateway.jwks")

_READ_CHUNK = 16384


@dataclass(frozen=True, slots=True)
class RemoteJWKSSettings:
    """Where a client's JWKS lives and how hard the gateway tries to fetch it."""

    uri: str
    timeout: float = 2.0
    max_bytes: int = 65536
    ttl: float = 300.0
    refresh_cooldown: float = 30.0
    default_alg: str | None = None

    def __post_init__(self) -> None:
        if urlsplit(self.uri).scheme not in ("https", "http"):
            raise ValueError(f"jwks_uri must be an http(s) URL, got {mask_userinfo(self.uri)!r}")
        if self.timeout <= 0 or self.max_bytes <= 0 or self.ttl <= 0 or self.refresh_cooldown < 0:
            raise ValueError("timeout, max_bytes and ttl must be > 0, refresh_cooldown >= 0")


class _FetchError(Exception):
    pass


class RemoteJWKS:
    """Keys from a `jwks_uri`, refreshed on TTL expiry and on an unknown kid (rate-limited)."""

    def __init__(
        self,
        settings: RemoteJWKSSettings,
        *,
        source: str,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.fetches = 0
        self.last_error: str | None = None
        self._on_fetch = on_fetch
        self._session: aiohttp.ClientSession | None = None
        self._keys = KeySet(())
        self._refresh_at = 0.0  # monotonic; 0 = refresh on first use
        self._last_fetch_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    @property
    def keys(self) -> KeySet:
        """The key set in use (empty until a fetch has succeeded)."""
        return self._keys

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Do the first fetch with the shared `session`; a failure is logged, not raised."""
        self._session = session
        await self._refresh()

    async def select(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`, refreshing when the TTL has passed or the kid is new."""
        now = monotonic()
        if now >= self._refresh_at and self._session is not None:
            await self._refresh()
        key = self._keys.select(kid)
        if key is not None or self._session is None:
            return key
        # Unknown kid: the client may have rotated its keys. Join a fetch already under
        # way; otherwise start one only if the cooldown has passed, so a flood of made-up
        # kids costs one fetch per cooldown window (RFC 8725 §3.10: kid is untrusted).
        if self._inflight is None:
            last = self._last_fetch_at
            if last is not None and now - last < self.settings.refresh_cooldown:
                return None
        await self._refresh()
        return self._keys.select(kid)

    async def close(self) -> None:
        """Cancel a fetch under way; the shared session is not closed here."""
        task, self._inflight = self._inflight, None
        self._session = None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    async def _refresh(self) -> None:
        # Single flight: every caller waits for the same task. asyncio.wait neither
        # propagates the task's outcome nor cancels it when one waiter is cancelled.
        task = self._inflight
        if task is None:
            task = asyncio.create_task(self._fetch(), name=f"jwks fetch {self.source}")
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        await asyncio.wait((task,))

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        session = self._session
        if session is None:
            return
        self.fetches += 1
        self._last_fetch_at = monotonic()
        try:
            document = await self._download(session)
            key_set = KeySet(
                keys_from_jwks(document, source=mask_userinfo(self.settings.uri), default_alg=self.settings.default_alg)
            )
        except (_FetchError, KeyLoadError) as exc:
            self._failed(str(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except Exception as exc:  # a fetch must never take the request path down
            logger.exception("jwks fetch crashed", extra={"jwks_source": self.source})
            self._failed(f"unexpected {type(exc).__name__}")
        else:
            self._keys = key_set
            self._refresh_at = monotonic() + self.settings.ttl
            self.last_error = None
            logger.info(
                "jwks fetched: %s: %d key(s)",
                self.source,
                len(key_set),
                extra={
                    "jwks_source": self.source,
                    "jwks_uri": mask_userinfo(self.settings.uri),
                    "jwks_keys": len(key_set),
                    "duration_ms": round((monotonic() - self._last_fetch_at) * 1000, 1),
                },
            )
            self._report("ok")

    async def _download(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        settings = self.settings
        # RFC 8725 §3.10: no redirects (SSRF); identity encoding, so the size cap below
        # bounds what is held in memory, not a compressed body that expands later.
        async with session.get(
            settings.uri,
            allow_redirects=False,
            timeout=self._timeout,
            auto_decompress=False,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
        ) as response:
            if response.status != 200:
                raise _FetchError(f"HTTP {response.status}")
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            if encoding != "identity":
                raise _FetchError(f"unexpected Content-Encoding {encoding!r}")
            too_large = f"body larger than {settings.max_bytes} bytes"
            length = response.content_length
            if length is not None and length > settings.max_bytes:
                raise _FetchError(too_large)
            # Content-Length may be absent or wrong: count what is actually read.
            body = bytearray()
            async for chunk in response.content.iter_chunked(_READ_CHUNK):
                body += chunk
                if len(body) > settings.max_bytes:
                    raise _FetchError(too_large)
        try:
            document = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise _FetchError("body is not UTF-8 JSON") from None
        if not isinstance(document, dict):
            raise _FetchError("body is not a JSON object")  # RFC 7517 §5
        return document

    def _failed(self, error: str) -> None:
        # Stale-if-error: keep the previous keys, retry no sooner than the cooldown, so
        # a dead JWKS server does not put a fetch timeout on every request.
        error = mask_userinfo(error)  # a client library's message may quote the URI with its password
        self.last_error = error
        self._refresh_at = monotonic() + self.settings.refresh_cooldown
        logger.warning(
            "jwks fetch failed: %s: %s (keeping %d key(s))",
            self.source,
            error,
            len(self._keys),
            extra={"jwks_source": self.source, "jwks_uri": mask_userinfo(self.settings.uri)},
        )
        self._report("error")

    def _report(self, outcome: str) -> None:
        if self._on_fetch is None:
            return
        try:
            self._on_fetch(outcome)
        except Exception:
            logger.exception("jwks on_fetch callback failed")
