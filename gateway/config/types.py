"""Scalar config types parsed at load: durations, rates and secret references."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
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


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
RateValue = Annotated[Rate, BeforeValidator(parse_rate), PlainSerializer(str)]
SecretRef = Annotated[Secret, BeforeValidator(parse_secret), PlainSerializer(repr)]
