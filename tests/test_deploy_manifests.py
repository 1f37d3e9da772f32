"""The deployment files are valid and agree with the code: the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate, offline), the compose file against the compose
specification's JSON schema (vendored by check-jsonschema), and the Dockerfile's two images."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jobs.queue import QUEUE

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.37.0"
WORKER_ONLY = ("torch", "safetensors", "matplotlib")  # what the api image leaves out


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


BUILTIN = [d for d in manifests() if not d["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("doc", BUILTIN, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_passes_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    broken = copy.deepcopy(find("Deployment", "worker"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = copy.deepcopy(find("Deployment", "gateway"))
    container(typo)["imagePullPolicy "] = "Always"  # strict: unknown fields are errors
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_the_manifests_hold_the_deployment_the_issue_asks_for() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    assert {
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Deployment", "worker"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("PersistentVolumeClaim", "midiffusion-storage"),
        ("ScaledObject", "worker"),
    } <= kinds
    assert {d["metadata"].get("namespace", "midiffusion") for d in manifests()} == {"midiffusion"}
    gateway, worker = find("Deployment", "gateway"), find("Deployment", "worker")
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(gateway)
    for deployment in (gateway, worker):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's midiff user
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
        assert claims == ["midiffusion-storage"]
        mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert mounts == {find("ConfigMap", "midiffusion")["data"]["MIDIFF_STORAGE_DIR"]}
    assert find("PersistentVolumeClaim", "midiffusion-storage")["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    assert container(gateway)["image"].startswith("midiffusion-api:")
    assert container(worker)["image"].startswith("midiffusion-worker:")
    redis = find("StatefulSet", "redis")
    assert "--appendonly" in container(redis)["args"] and redis["spec"]["volumeClaimTemplates"]


def test_keda_scales_the_workers_on_the_celery_list() -> None:
    scaled = find("ScaledObject", "worker")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"] == find("Deployment", "worker")["metadata"]["name"]
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == QUEUE
    host, port = trigger["metadata"]["address"].rsplit(":", 1)
    redis_url = find("ConfigMap", "midiffusion")["data"]["MIDIFF_REDIS_URL"]
    service = find("Service", "redis")
    assert host.split(".")[0] == service["metadata"]["name"] == re.split("[/:]+", redis_url)[1]
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert trigger["metadata"]["databaseIndex"] == redis_url.rsplit("/", 1)[1]
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


def _compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_the_compose_file_passes_the_compose_specification() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [e.message for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["stop_grace_period"] = ["5m"]
    broken["services"]["gateway"]["helthcheck"] = {}
    assert len(list(validator.iter_errors(broken))) >= 2
    services = compose["services"]
    assert services["gateway"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    for name in ("gateway", "worker"):
        assert services[name]["healthcheck"]["test"]
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in mounts


def _stages(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM .* AS (\w+)$", dockerfile, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_dockerfile_builds_a_torch_free_api_and_a_worker_both_non_root() -> None:
    stages = _stages((REPO / "Dockerfile").read_text())
    assert {"base", "api", "worker"} <= set(stages)
    assert "useradd --create-home --uid 10001 midiff" in stages["base"]
    for target in ("api", "worker"):
        assert re.search(r"^USER midiff$", stages[target], re.MULTILINE), target
        assert "HEALTHCHECK" in stages[target], target
    assert f"--without {' '.join(WORKER_ONLY)}" in stages["api"]
    assert "ARG TORCH_INDEX_URL" in stages["worker"]
    # both images install the same code: every package pyproject installs, from one stage
    include = re.search(r"^include = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)
    packages = {p.strip(' "*') for p in include.group(1).split(",")}
    assert set(re.findall(r"^COPY (\w+) /src/\1$", stages["source"], re.M)) == packages
    for target in ("api", "worker"):
        assert "COPY --from=source /src ./" in stages[target], target
    api = subprocess.run(
        [sys.executable, "deploy/requirements.py", "--without", *WORKER_ONLY],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert api and not [r for r in api if r.split("=")[0] in WORKER_ONLY]
    assert any(r.startswith("fastapi==") for r in api)
    refused = subprocess.run(
        [sys.executable, "deploy/requirements.py", "--without", "tensorflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "tensorflow" in refused.stderr


# the api image's packages suffice: the gateway starts and answers with them made unimportable
_WITHOUT_WORKER_PACKAGES = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the api image)")
sys.meta_path.insert(0, Missing())
import midiffusion.cli.main, midiffusion.cli.serve, worker.app, worker.settings
from fastapi.testclient import TestClient
from pydantic import SecretStr
from service.app import create_app
from service.settings import GatewaySettings
settings = GatewaySettings(storage_dir={storage!r}, api_keys=SecretStr("k"))
with TestClient(create_app(settings)) as client:
    assert client.get("/health/live").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "midiff_queue_depth" in metrics.text
print("gateway ok")
"""


def test_the_gateway_runs_without_the_worker_only_packages(tmp_path: Path) -> None:
    code = _WITHOUT_WORKER_PACKAGES.format(blocked=set(WORKER_ONLY), storage=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "gateway ok" in result.stdout
