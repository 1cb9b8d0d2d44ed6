"""The Helm chart renders, lints, and every object it renders is valid Kubernetes.

No cluster runs here, so the chart is checked with the tools of the ecosystem: `helm lint --strict`,
`helm template` for two Kubernetes versions, and every rendered object validated strictly (unknown
fields refused) against the Kubernetes schemas shipped by the `kubernetes-validate` package. The two
prometheus-operator objects have no schema there: the PrometheusRule's rules are checked with
`promtool check rules` and compared with deploy/prometheus/rules.yml (their one source), the
ServiceMonitor against the Service it selects. The rendered gateway configuration loads with the
gateway's own parser, with the secrets the Deployment supplies by reference.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import parse_config
from tests.integration.test_deploy_files import materialise, references, under

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "bearer-gateway"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
# The oldest and the newest minor that kubernetes-validate ships schemas for and we support.
KUBE_VERSIONS = ("1.34.0", "1.37.0")


@cache
def helm() -> str:
    """helm, built from the Go module proxy into ~/.cache/bearer-gateway/bin when missing."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True,
                          timeout=900, check=True)
    return done.stdout.strip().splitlines()[-1]


def render(*args: str, kube_version: str = KUBE_VERSIONS[-1]) -> dict[str, dict[str, Any]]:
    done = subprocess.run([helm(), "template", "gw", str(CHART), "--namespace", "gw",
                           "--kube-version", kube_version, *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_helm_lint_strict_passes_with_defaults_and_with_everything_on():
    for extra in ([], ["-f", str(ALL_ON)]):
        done = subprocess.run([helm(), "lint", "--strict", str(CHART), *extra], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(kube_version: str):
    for extra in ([], ["-f", str(ALL_ON)]):
        objects = render(*extra, kube_version=kube_version)
        core = {name: doc for name, doc in objects.items() if not doc["apiVersion"].startswith("monitoring.coreos.com")}
        assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                "NetworkPolicy"} <= {doc["kind"] for doc in core.values()}
        for name, doc in core.items():
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name} is not valid for Kubernetes {kube_version}: {error.message} at {list(error.path)}")
    assert "Ingress/gw-bearer-gateway" in objects  # the all-on render has the optional objects
    # The strict schemas do refuse what is wrong: an unknown field in the Deployment.
    broken = dict(objects["Deployment/gw-bearer-gateway"])
    broken["spec"] = {**broken["spec"], "replicaz": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kube_version, strict=True)


def test_prometheus_rule_is_rules_yml_and_promtool_accepts_it(tmp_path: Path):
    objects = render("-f", str(ALL_ON))
    rule = objects["PrometheusRule/gw-bearer-gateway"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(["promtool", "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (CHART / "files" / "rules.yml").resolve() == RULES  # a link, not a copy

    monitor = objects["ServiceMonitor/gw-bearer-gateway"]
    metrics = objects["Service/gw-bearer-gateway-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= objects["Service/gw-bearer-gateway"]["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {port["name"] for port in metrics["spec"]["ports"]}
    relabel = endpoint["relabelings"][0]
    assert (relabel["targetLabel"], relabel["replacement"]) == ("job", "bearer-gateway")
    assert 'job="bearer-gateway"' in RULES.read_text()  # what the alerts select


def test_optional_objects_are_off_by_default():
    kinds = {doc["kind"] for doc in render().values()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "Ingress"}
    without = render("--set", "networkPolicy.enabled=false", "--set", "podDisruptionBudget.enabled=false",
                     "--set", "autoscaling.enabled=false")
    assert {doc["kind"] for doc in without.values()} == {"ConfigMap", "Deployment", "Service"}
    assert without["Deployment/gw-bearer-gateway"]["spec"]["replicas"] == 2  # without the HPA, replicaCount


def test_config_hash_annotation_follows_the_config():
    def checksum(*args: str) -> str:
        pod = render(*args)["Deployment/gw-bearer-gateway"]["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    objects = render()
    data = objects["ConfigMap/gw-bearer-gateway-config"]["data"]["gateway.yaml"]
    assert checksum() == hashlib.sha256(data.rstrip("\n").encode()).hexdigest()
    assert checksum() == checksum("--set", "replicaCount=3")  # not a config change: no roll
    assert checksum() != checksum("--set", "config.logging.level=debug")


def test_objects_agree_with_each_other():
    objects = render("-f", str(ALL_ON))
    deployment = objects["Deployment/gw-bearer-gateway"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    assert re.fullmatch(r"bearer-gateway:0\.1\.0@sha256:[0-9a-f]{64}", container["image"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "admin": 9100}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for name in ("Service/gw-bearer-gateway", "Service/gw-bearer-gateway-metrics"):
        service = objects[name]
        assert service["spec"]["selector"].items() <= labels.items(), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, name
    assert objects["Service/gw-bearer-gateway"]["spec"]["ports"][0]["targetPort"] == "http"  # admin is not public
    ingress = objects["Ingress/gw-bearer-gateway"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": "gw-bearer-gateway", "port": {"name": "http"}}
    pdb = objects["PodDisruptionBudget/gw-bearer-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler/gw-bearer-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw-bearer-gateway"}
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation is relative to it
    policy = objects["NetworkPolicy/gw-bearer-gateway"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == set(ports)
    assert {53, 6379} <= {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_service_monitor_sends_the_metrics_token_when_asked():
    endpoint = render("-f", str(ALL_ON))["ServiceMonitor/gw-bearer-gateway"]["spec"]["endpoints"][0]
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "bearer-gateway-credentials", "key": "metrics-token"}}
    assert "authorization" not in render("--set", "serviceMonitor.enabled=true",
                                         "--set", "metricsService.enabled=true")[
        "ServiceMonitor/gw-bearer-gateway"]["spec"]["endpoints"][0]


def test_rendered_config_loads_with_the_secrets_the_deployment_supplies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    objects = render()
    deployment = objects["Deployment/gw-bearer-gateway"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    # The config file the container is told to read is the ConfigMap's key, mounted there.
    config_path = container["args"][container["args"].index("-c") + 1]
    directory, key = config_path.rsplit("/", 1)
    configmap_name = mounts[directory]["configMap"]["name"]
    config = yaml.safe_load(objects[f"ConfigMap/{configmap_name}"]["data"][key])

    names, files = references(config)
    env = {item["name"]: item for item in container["env"]}
    assert names and names == set(env)
    for name in names:
        assert "secretKeyRef" in env[name]["valueFrom"], f"{name} must come from a Secret, not a literal"
        assert "value" not in env[name]
    for path in files:
        mount = next((m for m in mounts if under(path, [m])), None)
        assert mount is not None, f"{path} is not on a volume of the container"
        assert "secret" in mounts[mount], f"{path} (a key) must come from a Secret volume"
        assert mounts[mount]["secret"]["defaultMode"] & 0o007 == 0  # not world-readable

    for name in names:
        monkeypatch.setenv(name, "throwaway-test-value")
    parsed = parse_config(materialise(config, tmp_path), f"ConfigMap/{configmap_name}")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert parsed.listen.port == ports["http"]
    assert parsed.admin.port == ports["admin"]
    assert str(parsed.admin.host) == "0.0.0.0"  # kubelet probes and Prometheus come from outside the pod
    assert parsed.workers == 1
    # Several replicas share replay and rate-limit state only through Redis.
    assert objects["HorizontalPodAutoscaler/gw-bearer-gateway"]["spec"]["minReplicas"] > 1
    assert parsed.state.backend == "redis"


PASS_THROUGH = {"config", "resources", "podSecurityContext", "securityContext", "podAnnotations", "podLabels",
                "nodeSelector", "affinity", "commonLabels"}


def test_every_value_is_documented():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    for key, value in values.items():
        assert f"`{key}`" in readme or f"`{key}." in readme, f"values.{key} is not in the chart README"
        # Kubernetes pass-through blocks (config, resources, security contexts, ...) are documented whole.
        if isinstance(value, dict) and key not in PASS_THROUGH:
            for sub in value:
                assert f"`{key}.{sub}`" in readme, f"values.{key}.{sub} is not in the chart README"
