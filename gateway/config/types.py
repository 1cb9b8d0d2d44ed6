"""Scalar config types parsed at load: durations, rates and secret references."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
DURATION_PATTERN = _DURATION.pattern
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^(\d+)\s*/\s*(s|m|h)$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def parse_duration(value: Any) -> float:
    """`300ms`, `5s`, `2m`, `1h` → seconds; bare numbers are refused so units are never guessed."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"expected a duration such as 300ms, 5s or 2m, got {value!r}")


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Rate:
    """A token-bucket refill rate: `count` tokens every `period` seconds."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.period]
        return f"{self.count}/{unit}"


def parse_rate(value: Any) -> Rate:
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        match = _RATE.match(value.strip())
        if match and int(match.group(1)) > 0:
            return Rate(int(match.group(1)), _RATE_UNITS[match.group(2)])
    raise ValueError(f"expected a rate such as 50/s or 600/m (count > 0), got {value!r}")


class Secret:
    """A secret resolved from `${ENV}` or `{file: path}`; its repr never shows the value."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str) -> None:
        self._value = value
        self.reference = reference

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference}, ***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.reference)


def parse_secret(value: Any) -> Secret:
    """Resolve a secret reference now, so a missing secret is a load error, not a request error."""
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        match = _ENV_REF.match(value.strip())
        if not match:
            raise ValueError(
                "expected a secret reference ${ENV_NAME} or {file: /path}; secrets are never written in the config file"
            )
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        if os.environ[name] == "":
            raise ValueError(f"environment variable {name} is empty")
        return Secret(os.environ[name], f"${{{name}}}")
    if isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str):
        path = Path(value["file"])
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not text:
            raise ValueError(f"secret file {path} is empty")
        return Secret(text, f"file:{path}")
    raise ValueError("expected a secret reference ${ENV_NAME} or {file: /path}")


def parse_network(value: Any) -> IPv4Network | IPv6Network:
    """`10.0.0.0/8`, `2001:db8::/32`, or one address (a /32 or /128); host bits must be zero."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    expected = "expected an IP network in CIDR notation such as 10.0.0.0/8 or 2001:db8::/32 (host bits zero)"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {value!r}")
    try:
        return ip_network(value, strict=True)
    except ValueError:
        raise ValueError(f"{expected}, got {value!r}") from None


# The JSON Schema (`bearer-gateway schema`) of each scalar type, as written in the YAML file.
_DURATION_SCHEMA = {"type": "string", "pattern": _DURATION.pattern, "examples": ["300ms", "5s", "2m"]}
_RATE_SCHEMA = {"type": "string", "pattern": _RATE.pattern, "examples": ["50/s", "600/m"]}
_SECRET_SCHEMA = {
    "description": "a secret reference, never the secret: ${ENV_NAME} or {file: /path}",
    "anyOf": [
        {"type": "string", "pattern": _ENV_REF.pattern},
        {
            "type": "object",
            "properties": {"file": {"type": "string"}},
            "required": ["file"],
            "additionalProperties": False,
        },
    ],
}


def _human(seconds: float) -> str:
    """A duration in its largest whole unit, for messages: 3600 -> 1h, 300 -> 5m, 0 -> 0s."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return format_duration(seconds)


def duration_in(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None) -> Any:
    """A Duration type bounded as given; the refusal says the bounds and what the file had, in units."""
    bounds = []
    if above is not None:
        bounds.append(f"> {_human(above)}")
    if at_least is not None:
        bounds.append(f">= {_human(at_least)}")
    if at_most is not None:
        bounds.append(f"<= {_human(at_most)}")

    def check(seconds: float) -> float:
        if (
            (above is not None and seconds <= above)
            or (at_least is not None and seconds < at_least)
            or (at_most is not None and seconds > at_most)
        ):
            raise ValueError(f"expected a duration {' and '.join(bounds)}, got {_human(seconds)}")
        return seconds

    return Annotated[
        float,
        BeforeValidator(parse_duration),
        AfterValidator(check),
        PlainSerializer(format_duration),
        WithJsonSchema(_DURATION_SCHEMA),
    ]


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration), WithJsonSchema(_DURATION_SCHEMA)
]
# A duration where zero breaks something (a timeout that fires at once, a lifetime nothing fits in).
PositiveDuration = duration_in(above=0)
RateValue = Annotated[Rate, BeforeValidator(parse_rate), PlainSerializer(str), WithJsonSchema(_RATE_SCHEMA)]
SecretRef = Annotated[Secret, BeforeValidator(parse_secret), PlainSerializer(repr), WithJsonSchema(_SECRET_SCHEMA)]
Network = Annotated[
    IPv4Network | IPv6Network,
    BeforeValidator(parse_network),
    WithJsonSchema({"type": "string", "description": "an IP network in CIDR notation, e.g. 10.0.0.0/8"}),
]
