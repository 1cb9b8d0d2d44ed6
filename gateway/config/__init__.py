"""Configuration: the YAML contract, parsed and validated once into frozen objects."""

from gateway.config.load import ConfigError, load_config, parse_config
from gateway.config.model import GatewayConfig

__all__ = ["ConfigError", "GatewayConfig", "load_config", "parse_config"]
