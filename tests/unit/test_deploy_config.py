"""Static checks of the deployment files (no Docker engine or cluster runs here)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml

from pipelines.prefect_api import INGEST_FLOW, PROCESS_JOB_FLOW

REPO = Path(__file__).resolve().parents[2]


def test_compose_has_every_service_on_loopback_ports() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "prefect-server", "prefect-worker", "ray-head", "ray-worker",
            "api"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    database = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://")
    assert services["api"]["environment"]["MRDIFF_ENVIRONMENT"] == "production"


def test_prefect_yaml_entrypoints_are_the_pipeline_flows() -> None:
    document = yaml.safe_load((REPO / "deploy/prefect/prefect.yaml").read_text())
    flows = {}
    for deployment in document["deployments"]:
        path, _, attribute = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flows[deployment["name"]] = getattr(module, attribute).name
    assert flows == {PROCESS_JOB_FLOW: PROCESS_JOB_FLOW, INGEST_FLOW: INGEST_FLOW}
    for name in ("work-pool-process.json", "work-pool-kubernetes.json"):
        template = json.loads((REPO / "deploy/prefect" / name).read_text())
        assert {"job_configuration", "variables"} <= set(template)


def test_raycluster_matches_the_installed_ray() -> None:
    import ray

    cluster = yaml.safe_load((REPO / "deploy/kuberay/raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray.__version__


def test_image_pins_torch() -> None:
    assert "torch==2.13.0" in (REPO / "deploy/Dockerfile").read_text()
