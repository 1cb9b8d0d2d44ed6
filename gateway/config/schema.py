"""The JSON Schema of the configuration file, for editors (`bearer-gateway schema`)."""

from __future__ import annotations

from typing import Any

from gateway.config.model import GatewayConfig
from gateway.config.types import DURATION_PATTERN, format_duration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _is_duration(schema: dict[str, Any]) -> bool:
    if schema.get("pattern") == DURATION_PATTERN:
        return True
    return any(isinstance(s, dict) and _is_duration(s) for s in schema.get("anyOf", ()))


def _durations_as_written(node: Any) -> None:
    """A duration's default is a number of seconds in the model; the file writes `5s`."""
    if isinstance(node, dict):
        default = node.get("default")
        if isinstance(default, int | float) and not isinstance(default, bool) and _is_duration(node):
            node["default"] = format_duration(float(default))
        for value in node.values():
            _durations_as_written(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_written(value)


def config_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the YAML file as written: durations, rates and secret references as
    strings, keys by their names in the file (`global`), unknown keys refused. Cross-key rules and
    key files are checked by `check-config` only."""
    schema = GatewayConfig.model_json_schema(by_alias=True, mode="validation")
    _durations_as_written(schema)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "urn:bearer-gateway:config",
        "title": "Bearer Gateway configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }
