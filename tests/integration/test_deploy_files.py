"""The deployment files (container image, compose; the Helm chart in test_helm_chart.py) hang together, and their gateway configs load.

No container engine or cluster runs here, so these check what can be checked without one: every
file parses, every path they mount or copy exists, every secret is a reference supplied by the
platform, ports and probes agree with the embedded gateway configuration (which must validate with
the gateway's own parser), and the image's HEALTHCHECK command works against a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway
from gateway.config import parse_config
from gateway.jose.signing import generate_private_key_pem, load_signing_key
from tests.support.gateway import base_config
from tests.support.prometheus import free_port

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "deploy" / "container"
COMPOSE = ROOT / "deploy" / "compose"
DASHBOARDS = ROOT / "dashboards"

ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
FILE_KEYS = {"private_key_file", "jwks_file", "file", "cert_file", "key_file", "ca_file"}


def yaml_documents(directory: Path) -> dict[Path, list[Any]]:
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    return {path: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None] for path in files}


def references(config: Any) -> tuple[set[str], set[str]]:
    """(environment variable names, absolute file paths) a gateway configuration refers to."""
    names: set[str] = set()
    files: set[str] = set()

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str):
            match = ENV_REF.match(node)
            if match:
                names.add(match.group(1))
            elif key in FILE_KEYS:
                files.add(node)

    walk(config)
    return names, files


def materialise(config: Any, tmp_path: Path) -> Any:
    """The same configuration with each key file replaced by a real generated file in tmp_path."""

    def fake(path: str) -> str:
        target = tmp_path / path.strip("/").replace("/", "_")
        if not target.exists():
            pem = generate_private_key_pem("ES256")
            if path.endswith(".json"):
                jwk = load_signing_key(pem, alg="ES256", kid=target.stem, source="test").public_jwk()
                target.write_text(json.dumps({"keys": [jwk]}))
            else:
                target.write_bytes(pem)
        return str(target)

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item, key) for item in node]
        if isinstance(node, str) and key in FILE_KEYS and not ENV_REF.match(node):
            return fake(node)
        return node

    return walk(config)


def under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


# --- the container image -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CONTAINER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_copies_files_that_exist_and_runs_unprivileged():
    instructions = dockerfile_instructions()
    froms = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]  # both stages on the one pinned base
    copies = [rest for keyword, rest in instructions if keyword == "COPY" and "--from=" not in rest]
    assert copies
    ignored = (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    for rest in copies:
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository (build context: the root)"
            assert source.rstrip("/") in kept, f"COPY {source}: excluded by Dockerfile.dockerignore"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'readme = "README.md"' in pyproject  # why README.md is copied: pip needs it to build
    assert 'bearer-gateway = "gateway.cli:main"' in pyproject
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    exposed = {port for keyword, rest in instructions if keyword == "EXPOSE" for port in rest.split()}
    assert exposed == {"8080", "9100"}
    entrypoint = json.loads(next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT"))
    command = json.loads(next(rest for keyword, rest in instructions if keyword == "CMD"))
    assert entrypoint + command == ["bearer-gateway", "run", "-c", "/etc/bearer-gateway/gateway.yaml"]


def build_args() -> dict[str, str]:
    """The build arguments' defaults (an ARG repeated without a value only brings it into a stage)."""
    pairs = [rest.split("=", 1) for keyword, rest in dockerfile_instructions() if keyword == "ARG" and "=" in rest]
    return {name: value for name, value in pairs}


def test_base_image_pinned_by_version_and_digest_and_labelled():
    base = build_args()["BASE_IMAGE"]
    # A full patch version and a digest (a placeholder until the operator looks the real one up).
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    labels = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "LABEL")
    found = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', labels))
    assert set(found) == {f"org.opencontainers.image.{name}" for name in
                          ("title", "description", "version", "revision", "created", "licenses", "base.name")}
    assert found["org.opencontainers.image.version"] == "${VERSION}"
    assert build_args()["VERSION"] == gateway.__version__
    assert found["org.opencontainers.image.base.name"] == "${BASE_IMAGE}"
    assert 'license = {text = "Apache-2.0"}' in (ROOT / "pyproject.toml").read_text()


def test_dependencies_come_from_the_lock_file():
    runs = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs and all("--no-index" in install for install in installs)  # only the locked wheels
    lock = (ROOT / "requirements.lock").read_text()
    assert "--hash=sha256:" in lock


def test_hadolint_passes_without_ignores(tmp_path: Path):
    hadolint = Path(sys.executable).with_name("hadolint")
    dockerfile = CONTAINER / "Dockerfile"
    assert "hadolint ignore" not in dockerfile.read_text()
    assert not any((ROOT / name).exists() for name in (".hadolint.yaml", ".hadolint.yml"))
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # hadolint does look: an unpinned install added to the same file is reported.
    broken = tmp_path / "Dockerfile"
    broken.write_text(dockerfile.read_text().replace("USER 10001:10001", "RUN pip install requests\nUSER 10001:10001"))
    done = subprocess.run([str(hadolint), "--no-color", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3013" in done.stdout


def healthcheck_code() -> str:
    line = next(rest for keyword, rest in dockerfile_instructions() if keyword == "HEALTHCHECK")
    exec_form = json.loads(line[line.index("CMD") + 3:].strip())
    assert exec_form[:2] == ["python", "-c"]
    return str(exec_form[2])


async def run_python(code: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


async def test_healthcheck_command_passes_on_a_live_gateway_and_fails_without_one(upstream, gateway_factory):
    code = healthcheck_code()
    assert "127.0.0.1:9100/healthz" in code
    gw = await gateway_factory(base_config(upstream.token_url))
    assert await run_python(code.replace(":9100/", f":{gw.gateway.admin_port}/")) == 0
    assert await run_python(code.replace(":9100/", f":{free_port()}/")) != 0


# --- compose -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def test_every_yaml_file_parses():
    for directory in (COMPOSE, DASHBOARDS / "provisioning" / "datasources",
                      DASHBOARDS / "provisioning" / "dashboards", ROOT / "deploy" / "prometheus"):
        documents = yaml_documents(directory)
        assert documents, directory
        for path, docs in documents.items():
            assert docs, f"{path} is empty"
            assert all(isinstance(doc, dict) for doc in docs), path


def test_compose_services_mounts_and_secrets():
    document = compose()
    services = document["services"]
    assert {"gateway", "redis", "keycloak", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == CONTAINER / "Dockerfile", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in document.get("volumes", {}), f"{name}: undeclared volume {source}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"SECRET|PASSWORD|TOKEN", key) and not key.endswith("_USER"):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{name}.{key} is a literal"
    # Every variable compose.yaml needs without a default is in .env.example; .env stays out of git.
    text = (COMPOSE / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = env_example()
    assert required and required <= set(example)
    assert all(example[name] for name in required)
    assert ".env" in (COMPOSE / ".gitignore").read_text().split()
    assert not (COMPOSE / ".env").exists() or ".env" in (COMPOSE / ".gitignore").read_text()


def test_compose_prometheus_and_grafana_wiring():
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert (COMPOSE / mounts["/etc/prometheus/prometheus.yml"]).resolve() == COMPOSE / "prometheus.yml"
    assert (COMPOSE / mounts["/etc/prometheus/rules.yml"]).resolve() == ROOT / "deploy" / "prometheus" / "rules.yml"
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    gateway_config = yaml.safe_load((COMPOSE / "gateway.yaml").read_text())
    assert targets == [f"gateway:{gateway_config['admin']['port']}"]
    assert gateway_config["admin"]["host"] == "0.0.0.0"  # Prometheus scrapes over the compose network

    grafana = services["grafana"]
    mounts = {v.split(":")[1]: (COMPOSE / v.split(":")[0]).resolve() for v in grafana["volumes"] if v.startswith(".")}
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards" / "bearer-gateway.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == DASHBOARDS
    assert (DASHBOARDS / "bearer-gateway.json").is_file()
    assert mounts["/etc/grafana/provisioning/datasources"] == DASHBOARDS / "provisioning" / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == DASHBOARDS / "provisioning" / "dashboards"
    datasource = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    variable = re.fullmatch(r"\$\{(\w+)\}", url)
    assert variable and grafana["environment"][variable.group(1)] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/bearer-gateway.json"


def test_compose_gateway_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    service = compose()["services"]["gateway"]
    config = yaml.safe_load((COMPOSE / "gateway.yaml").read_text())
    names, files = references(config)
    assert names == {"CAMARA_APP_SECRET", "REDIS_PASSWORD"}
    assert names <= set(service["environment"])
    mounts = [v.split(":")[1] for v in service["volumes"]]
    assert "/etc/bearer-gateway/gateway.yaml" in mounts  # where the image's CMD reads it
    for path in files:
        assert under(path, mounts), f"{path} is not on a volume of the gateway service"
    # The key-generating one-shot writes exactly the files the configuration reads.
    script = "\n".join(compose()["services"]["gateway-keys"]["command"])
    for path in files:
        assert Path(path).name in script, f"gateway-keys does not create {path}"
    for name in names:
        monkeypatch.setenv(name, "throwaway-test-value")
    parsed = parse_config(materialise(config, tmp_path), "deploy/compose/gateway.yaml")
    assert parsed.state.backend == "redis"
    assert parsed.admin.port == 9100 and parsed.listen.port == 8080
    assert {client.client_id for client in parsed.clients} == {"demo-app", "demo-app-pkjwt"}


# --- the dashboard file --------------------------------------------------------------------------


def test_dashboard_structure():
    dashboard = json.loads((DASHBOARDS / "bearer-gateway.json").read_text())
    assert 38 <= dashboard["schemaVersion"] <= 40
    assert dashboard["uid"] == "bearer-gateway"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Authorization server", "Protection", "Configuration and build"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert "$job" in target["expr"] or target["expr"].startswith("up{"), panel["title"]
