"""Start the real gateway on free loopback ports from a config dict written to a YAML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.config import load_config
from gateway.server.app import Gateway

TOKEN_PATH = "/oauth2/token"
AUDIENCE = "https://gateway.test/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


# BG_TEST_ENGINE=aiohttp|lean runs every test that starts a gateway on that listener (default: the config default).
ENGINE = os.environ.get("BG_TEST_ENGINE")


def base_config(token_url: str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0, **({"engine": ENGINE} if ENGINE else {})},
        "admin": {"host": "127.0.0.1", "port": 0},
        "token_paths": [TOKEN_PATH],
        "upstream": {"token_url": token_url, "timeouts": {"connect": "1s", "total": "2s"}},
        "profile": {"audiences": [AUDIENCE]},
        "logging": {"audit": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class RunningGateway:
    def __init__(self, gateway: Gateway, path: Path) -> None:
        self.gateway = gateway
        self.path = path
        self.session = aiohttp.ClientSession()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.main_port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"

    async def post_form(
        self, form: dict[str, str] | str | bytes, headers: dict[str, str] | None = None, path: str = TOKEN_PATH
    ) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        data = form if isinstance(form, str | bytes) else aiohttp.FormData(form)()
        async with self.session.post(self.url + path, data=data, headers=hdrs) as response:
            raw = await response.read()
            try:
                document = await response.json(content_type=None)
            except ValueError:
                document = {"_raw": raw.decode(errors="replace")}
            return response.status, document, response.headers

    async def token(self, assertion: str, **extra: str) -> tuple[int, dict[str, Any], Any]:
        return await self.post_form({"grant_type": JWT_BEARER, "assertion": assertion, **extra})

    async def stop(self) -> None:
        await self.session.close()
        await self.gateway.stop()


async def start_gateway(config: dict[str, Any], tmp_path: Path, name: str = "gateway.yaml") -> RunningGateway:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_config(path), str(path))
    await gateway.start()
    return RunningGateway(gateway, path)


def metric_value(text: str, sample: str) -> float:
    """The value of one exposition sample line (name with labels), 0 when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
