"""Bearer Gateway: a hardening gateway for the CAMARA RFC 7523 JWT-bearer flow."""

__version__ = "0.1.0"
