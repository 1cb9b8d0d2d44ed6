"""The Lua scripts, kept as package data under gateway/state/lua/ and composed from shared parts.

Every script is the clock (`now_us()`), the GCRA function and the script's own body, in that
order, so the algorithm is written once (lua/gcra.lua) and a test can swap the clock.
"""

from __future__ import annotations

from functools import cache
from hashlib import sha1
from importlib.resources import files

SHARED = ("clock", "gcra")


@cache
def lua(name: str) -> str:
    """The text of gateway/state/lua/<name>.lua."""
    return (files("gateway.state") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Script:
    """One composed script and its SHA-1 (what EVALSHA names)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, clock: str | None = None) -> None:
        self.name = name
        self.source = "\n".join([clock if clock is not None else lua("clock"), lua("gcra"), lua(name)])
        self.sha = sha1(self.source.encode(), usedforsecurity=False).hexdigest()
