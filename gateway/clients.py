"""A configured client, ready for the hot path: what the checks and the token route read about it.

Below the checks and the runtime, above `upstream/` and `jose/`: the runtime builds these objects,
the checks and the server only read them (docs/architecture.md).
"""

from __future__ import annotations

from gateway.config.model import Client
from gateway.jose.jwks_remote import RemoteJWKS
from gateway.jose.keys import KeySet, VerificationKey
from gateway.upstream.builder import UpstreamRequestBuilder
from gateway.upstream.forward import UpstreamClient


class ClientRuntime:
    """A configured client: keys parsed, upstream request builder prepared."""

    def __init__(
        self,
        config: Client,
        algorithms: frozenset[str],
        keys: KeySet | None,
        remote: RemoteJWKS | None,
        builder: UpstreamRequestBuilder,
        upstream: UpstreamClient,
    ) -> None:
        self.config = config
        self.client_id = config.client_id
        self.enabled = config.enabled
        self.algorithms = algorithms
        self.jwt_bearer_allowed = "jwt-bearer" in config.grant_types
        self.keys = keys
        self.remote = remote
        self.builder = builder
        self.upstream = upstream
        self.injects_credentials = config.upstream.client_auth.method != "none"

    async def select_key(self, kid: str | None) -> VerificationKey | None:
        if self.keys is not None:
            return self.keys.select(kid)
        assert self.remote is not None
        return await self.remote.select(kid)
