"""Read the YAML file, validate it into `GatewayConfig`, and explain any refusal by key path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.model import GatewayConfig
from gateway.redact import mask_userinfo


class ConfigError(Exception):
    """A refused configuration: every problem with the file, the key path and what was expected."""

    def __init__(
        self, source: str, problems: Sequence[tuple[str, str]], config: GatewayConfig | None = None
    ) -> None:
        self.source = source
        self.problems = list(problems)
        # Set when only cross-key rules failed: check-config still parses the key files of this model,
        # so that one run reports every problem of the file.
        self.config = config
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.source}: {path or '(top level)'}: {message}" for path, message in self.problems]
        return mask_userinfo("\n".join(lines))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = 1
    loader.flatten_mapping(node)
    return {
        loader.construct_object(k, deep=deep): loader.construct_object(v, deep=deep)
        for k, v in node.value
    }


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def key_path(loc: Iterable[int | str]) -> str:
    """('clients', 2, 'upstream', 'client_auth', 'method') → clients[2].upstream.client_auth.method"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "extra_forbidden": "unknown key (not part of the configuration contract)",
    "missing": "required key is missing",
}


def _explain(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return message
    got = repr(error.get("input"))
    if len(got) > 60:
        got = got[:57] + "..."
    return f"{message[0].lower()}{message[1:]}, got {got}"


def _prune_union_noise(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic reports each union member; the tagged member names (e.g. 'IPv4Network') only confuse ops.
    out = []
    for error in errors:
        loc = tuple(
            p for p in error["loc"] if not ((isinstance(p, str) and p[:1].isupper()) or p in ("function-after[",))
        )
        out.append({**error, "loc": loc})
    unique: dict[str, dict[str, Any]] = {}
    for error in out:
        unique.setdefault(key_path(error["loc"]), error)
    return list(unique.values())


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate already-parsed YAML data; raise ConfigError naming each bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "expected a mapping of configuration sections")])
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        errors = _prune_union_noise(exc.errors(include_url=False))  # type: ignore[arg-type]
        raise ConfigError(source, [(key_path(e["loc"]), _explain(e)) for e in errors]) from None
    from gateway.config.consistency import check_consistency

    problems = check_consistency(config)
    if problems:
        raise ConfigError(source, problems, config)
    return config


def load_config(path: str | Path) -> GatewayConfig:
    """Load and validate a YAML configuration file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read file: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            source, [("", f"expected UTF-8 text, got byte 0x{raw[exc.start]:02x} at line {line} (offset {exc.start})")]
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [("", f"invalid YAML: {where}{problem}")]) from None
    return parse_config(data, source)
