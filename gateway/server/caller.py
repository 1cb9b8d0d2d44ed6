"""Stage connection: who is calling. The peer, whether it is a trusted proxy, and the client address
from X-Forwarded-For, honoured only from a trusted proxy, every line of it."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from gateway.server.incoming import Incoming


def forwarded_for(incoming: Incoming) -> str:
    """Every X-Forwarded-For line joined (RFC 9110 §5.3): a proxy may append its own separate line."""
    return ", ".join(incoming.headers.getall("X-Forwarded-For", ()))


class Caller:
    """Where a request comes from: the peer, whether it is a trusted proxy, and the client address."""

    __slots__ = ("address", "peer", "via_proxy")

    def __init__(self, incoming: Incoming, trusted: Sequence[IPv4Network | IPv6Network]) -> None:
        self.peer = incoming.remote or "-"
        self.address = self.peer
        self.via_proxy = False
        if not trusted or self.peer == "-":
            return
        try:
            chain = [ip_address(self.peer)]
            self.via_proxy = any(chain[0] in net for net in trusted)
            hops = [h.strip() for h in forwarded_for(incoming).split(",") if h.strip()]
            # X-Forwarded-For is honoured only from a trusted proxy: walk from the nearest hop
            # outwards; the first untrusted address is the client.
            for hop in reversed(hops):
                if not any(chain[-1] in net for net in trusted):
                    break
                chain.append(ip_address(hop))
            self.address = str(chain[-1])
        except ValueError:
            self.address = self.peer

    def forwarding_headers(self, incoming: Incoming) -> dict[str, str]:
        """X-Forwarded-For/-Proto for the AS: a trusted proxy's chain is extended, anyone else's replaced."""
        existing = forwarded_for(incoming)
        headers = incoming.headers
        proto = headers.get("X-Forwarded-Proto", incoming.scheme) if self.via_proxy else incoming.scheme
        peer = "" if self.peer == "-" else self.peer
        chain = f"{existing}, {peer}" if (self.via_proxy and existing) else peer
        return {"X-Forwarded-For": chain, "X-Forwarded-Proto": proto}
