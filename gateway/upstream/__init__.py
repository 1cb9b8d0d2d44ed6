"""Everything on the way to the authorization server: the request builder and the forwarding core."""
