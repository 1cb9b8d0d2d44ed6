"""One request as the token route reads it, whichever listener parsed it (aiohttp's or the lean one)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy


class Incoming:
    """Method, target, headers and peer of one request; the body travels separately."""

    __slots__ = ("headers", "method", "path", "query_string", "remote", "scheme")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str] | CIMultiDictProxy[str],
        remote: str | None,
        scheme: str,
    ) -> None:
        self.method = method
        self.path = path  # percent-decoded, as the token paths are configured
        self.query_string = query_string
        self.headers = headers
        self.remote = remote
        self.scheme = scheme
