"""Userinfo (`user:password@`) masked in every URL the gateway prints: config output, logs, errors."""

from __future__ import annotations

import re

# scheme://userinfo@ — the userinfo ends at the first '@' before any '/', '?', '#' or whitespace.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def mask_userinfo(text: str) -> str:
    """`redis://:secret@host/0` → `redis://***@host/0`; any number of URLs in `text`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
