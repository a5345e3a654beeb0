"""Static checks of the deployment files (no Docker engine or cluster runs here).

The files must agree with the code: every ``MRDIFF_*`` variable they set is a field of
:class:`services.settings.Settings` (unknown ones are silently ignored, so a typo would
disable a setting), every ``${VAR}`` the compose file reads is in deploy/env.example, the
production settings they make load (and refuse the example's placeholders), and the published
ports, addresses and images fit together.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.prefect_api import INGEST_FLOW, PROCESS_JOB_FLOW
from services.recon.errors import InputError
from services.settings import PLACEHOLDER_PREFIX, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
MRDIFF_SERVICES = ("prefect-server", "prefect-worker", "ray-head", "ray-worker", "api")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / "deploy/env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with ``env``."""

    def one(match: re.Match[str]) -> str:
        name, text = match.group(1), match.group(0)
        if name in env and env[name] != "":
            return env[name]
        if ":-" in text:
            return text.split(":-", 1)[1].rstrip("}")
        raise AssertionError(f"{name} is required by docker-compose.yml but not set")

    return _VARIABLE.sub(one, str(value))


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    environment = compose()["services"][name].get("environment", {})
    return {key: interpolate(value, env) for key, value in environment.items()}


def real_secrets(env: dict[str, str]) -> dict[str, str]:
    """env.example with every placeholder replaced, as an operator would."""
    return {
        key: secrets.token_urlsafe(24) if value.startswith(PLACEHOLDER_PREFIX) else value
        for key, value in env.items()
    }


def settings_fields(variables: dict[str, Any]) -> set[str]:
    return {
        name.removeprefix("MRDIFF_").lower() for name in variables if name.startswith("MRDIFF_")
    }


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host address it is published on (``ip:port:port`` entries)."""
    ports = {}
    for entry in service.get("ports", []):
        address, host_port, container = str(entry).split(":")
        assert host_port == container, entry
        ports[int(container)] = address
    return ports


# -- docker-compose.yml -------------------------------------------------------------------------
def test_compose_has_every_service_on_loopback_ports() -> None:
    services = compose()["services"]
    assert {"minio", "minio-setup", "postgres", *MRDIFF_SERVICES} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    database = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://")
    assert services["api"]["environment"]["MRDIFF_ENVIRONMENT"] == "production"


def test_compose_images_are_pinned_and_mrdiff_is_built_from_the_dockerfile() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
    for name in MRDIFF_SERVICES:
        assert services[name]["image"] == f"mrdiff:{VERSION}", name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (REPO / services[name]["build"]["context"] / "deploy/Dockerfile").is_file()


def test_compose_variables_are_settings_fields_and_in_env_example() -> None:
    document = compose()
    example = env_example()
    for name, service in document["services"].items():
        unknown = settings_fields(service.get("environment", {})) - set(Settings.model_fields)
        assert not unknown, (name, unknown)
    required = set(_VARIABLE.findall((REPO / "docker-compose.yml").read_text()))
    assert required <= set(example), required - set(example)
    unused = set(example) - required  # those reach no container: they must be settings
    unknown = settings_fields(unused) - set(Settings.model_fields)
    assert not unknown and all(key.startswith("MRDIFF_") for key in unused), unused


def test_compose_settings_load_in_production_and_refuse_the_placeholders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("api", "prefect-worker", "ray-worker"):
        environment = service_env(name, real_secrets(env_example()))
        for key in [key for key in os.environ if key.startswith("MRDIFF_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.environment == "production"
        assert settings.ray_address == "ray-head:6379" and settings.ray_auth_mode == "token"
        assert settings.minio_webhook_enabled
    for key, value in service_env("api", env_example()).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InputError, match="placeholder"):
        load_settings()


def test_compose_ports_and_addresses_fit_together() -> None:
    services = compose()["services"]
    environment = service_env("api", real_secrets(env_example()))
    assert published(services["api"])[int(environment["MRDIFF_API_PORT"])] == "127.0.0.1"
    s3_host, _, s3_port = environment["MRDIFF_S3_ENDPOINT"].partition(":")
    assert s3_host == "minio" and int(s3_port) in published(services["minio"])
    prefect = re.fullmatch(r"http://([\w-]+):(\d+)/api", environment["MRDIFF_PREFECT_API_URL"])
    assert prefect and prefect.group(1) == "prefect-server"
    assert int(prefect.group(2)) in published(services["prefect-server"])
    assert environment["PREFECT_API_URL"] == environment["MRDIFF_PREFECT_API_URL"]
    ray_host, _, ray_port = environment["MRDIFF_RAY_ADDRESS"].partition(":")
    head = services["ray-head"]["command"]
    assert ray_host == "ray-head" and head[head.index("--port") + 1] == ray_port
    assert head[head.index("--dashboard-port") + 1] == "8265"
    assert 8265 in published(services["ray-head"])
    worker = services["ray-worker"]["command"]
    assert worker[worker.index("--address") + 1] == environment["MRDIFF_RAY_ADDRESS"]
    example = env_example()
    actors_cpus = int(example["MRDIFF_ACTORS"]) * int(example["MRDIFF_CPUS_PER_ACTOR"])
    assert actors_cpus <= int(example["RAY_WORKER_CPUS"])  # one worker holds the whole pool


def test_compose_keeps_the_api_keys_and_caches_on_volumes() -> None:
    document = compose()
    for name in ("api", "prefect-worker"):
        service = document["services"][name]
        data_dir = service_env(name, real_secrets(env_example()))["MRDIFF_DATA_DIR"]
        mounts = {
            str(volume).split(":")[1]: str(volume).split(":")[0]
            for volume in service.get("volumes", [])
        }
        assert mounts.get(data_dir) in document["volumes"], (name, mounts)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates_with_docker_compose(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in real_secrets(env_example()).items()))
    done = subprocess.run(
        [
            "docker-compose",
            "--env-file",
            str(env_file),
            "-f",
            str(REPO / "docker-compose.yml"),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- deploy/prefect -----------------------------------------------------------------------------
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


def test_the_compose_worker_serves_the_work_pool_of_prefect_yaml() -> None:
    document = yaml.safe_load((REPO / "deploy/prefect/prefect.yaml").read_text())
    pools = {deployment["work_pool"]["name"] for deployment in document["deployments"]}
    command = " ".join(compose()["services"]["prefect-worker"]["command"])
    assert pools == {"mrdiff"}
    assert "--pool mrdiff" in command and "deploy/prefect/prefect.yaml" in command
    assert "--base-job-template deploy/prefect/work-pool-process.json" in command


# -- deploy/kuberay -----------------------------------------------------------------------------
def kuberay_documents() -> dict[str, dict[str, Any]]:
    documents = {}
    for path in sorted((REPO / "deploy/kuberay").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[f"{document['kind']}/{document['metadata']['name']}"] = document
    return documents


def test_raycluster_matches_the_installed_ray() -> None:
    import ray

    cluster = yaml.safe_load((REPO / "deploy/kuberay/raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray.__version__


def test_kuberay_settings_are_settings_fields_and_every_reference_resolves() -> None:
    documents = kuberay_documents()
    config = documents["ConfigMap/mrdiff-settings"]["data"]
    secret = documents["Secret/mrdiff-secrets"]["stringData"]
    unknown = settings_fields({**config, **secret}) - set(Settings.model_fields)
    assert not unknown, unknown
    assert config["MRDIFF_ENVIRONMENT"] == "production"
    assert config["MRDIFF_RAY_ADDRESS"].startswith("mrdiff-ray-head-svc.")  # KubeRay's name
    cluster = documents["RayCluster/mrdiff-ray"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    namespaces = {document["metadata"].get("namespace") for document in documents.values()}
    assert namespaces == {"mrdiff"}
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert re.fullmatch(rf"mrdiff(-cuda)?:{re.escape(VERSION)}", container["image"])
            sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert sources == {"mrdiff-settings", "mrdiff-secrets"}
    pool = int(config["MRDIFF_ACTORS"]) * int(config["MRDIFF_CPUS_PER_ACTOR"])
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert pool <= int(worker["rayStartParams"]["num-cpus"]) * worker["maxReplicas"]


def test_kuberay_settings_load_once_the_secrets_are_real(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = kuberay_documents()
    values = {
        **documents["ConfigMap/mrdiff-settings"]["data"],
        **documents["Secret/mrdiff-secrets"]["stringData"],
    }
    for key, value in real_secrets(values).items():
        monkeypatch.setenv(key, str(value))
    assert load_settings().environment == "production"
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))
    with pytest.raises(InputError, match="placeholder"):
        load_settings()


def test_image_pins_torch() -> None:
    assert "torch==2.13.0" in (REPO / "deploy/Dockerfile").read_text()
