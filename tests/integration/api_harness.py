"""A real API stack for the API tests: nanio S3, a Prefect server, the ``process-job`` deployment
served by its own process (flow runs execute as subprocesses, as under ``mrdiff up``), a Ray
cluster, and the API under uvicorn on a loopback port.

The fixtures here (``prefect_api_url``, ``api_settings``, ``job_runner``, ``api_stack``,
``light_stack``, ``api_tenant``) are registered by conftest.py for every test in this folder, so
tests only name them as parameters; they reuse the session's ``s3_server``, ``storage`` and
``ray_cluster``. Tests import the helpers (:class:`ApiStack`, :func:`make_stack`,
:func:`wait_for_state`, ...) from this module.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from services.api.app import create_app
from services.api.auth import ApiKeyStore
from services.settings import Settings
from services.storage import Storage
from services.storage.local_server import free_port
from services.workers import RayConnection

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}
SERVE_SCRIPT = (
    "from pipelines.process_job import process_job\n"
    "process_job.serve(name='process-job', print_starting_message=False)\n"
)


@dataclass
class ApiStack:
    """A running API and what it runs on."""

    base_url: str
    settings: Settings
    storage: Storage
    keys: ApiKeyStore

    def key_for(self, tenant: str) -> str:
        """A fresh API key for ``tenant``."""
        return self.keys.create(tenant, label="api test").secret

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """An HTTP client for the API, sending ``key`` as a Bearer token when given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)


def settings_env(settings: Settings) -> dict[str, str]:
    """``MRDIFF_*`` variables that make another process use ``settings``."""
    values: dict[str, Any] = {
        "ENVIRONMENT": settings.environment,
        "DATA_DIR": settings.data_dir,
        "S3_ENDPOINT": settings.s3_endpoint,
        "S3_ACCESS_KEY": settings.s3_access_key,
        "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "S3_SECURE": str(settings.s3_secure).lower(),
        "RAW_BUCKET": settings.raw_bucket,
        "RESULTS_BUCKET": settings.results_bucket,
        "RAY_ADDRESS": settings.ray_address,
        "RAY_AUTH_MODE": settings.ray_auth_mode,
        "PREFECT_API_URL": settings.prefect_api_url,
        "API_PEPPER": settings.api_pepper.get_secret_value(),
        "ACTORS": settings.actors,
        "CPUS_PER_ACTOR": settings.cpus_per_actor,
    }
    return {f"MRDIFF_{name}": str(value) for name, value in values.items() if value is not None}


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Prefect server (SQLite) for the session; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield str(PREFECT_API_URL.value())


def wait_for_deployment(
    api_url: str, name: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0
) -> None:
    """Block until the Prefect server knows deployment ``name`` (flow/deployment)."""
    flow_name, deployment_name = name.split("/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"deployment server exited: {log.read_text()[-2000:]}")
        response = httpx.get(f"{api_url}/deployments/name/{flow_name}/{deployment_name}")
        if response.status_code == 200:
            return
        time.sleep(0.5)
    raise TimeoutError(f"deployment {name} not served after {timeout} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def api_settings(s3_server: Any, prefect_api_url: str, ray_cluster: RayConnection) -> Settings:
    """The session's settings, pointed at its Prefect server and Ray cluster."""
    return s3_server.settings.model_copy(
        update={
            "prefect_api_url": prefect_api_url,
            "ray_address": ray_cluster.address,
            "ray_auth_mode": ray_cluster.auth_mode,
            "actors": 1,
            "cpus_per_actor": 1,
        }
    )


@pytest.fixture(scope="session")
def job_runner(api_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``process-job`` served in its own process (``flow.serve``), as the stack runs it."""
    log = tmp_path_factory.mktemp("runner") / "serve.log"
    env = {
        **os.environ,
        **settings_env(api_settings),
        "PREFECT_API_URL": str(api_settings.prefect_api_url),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": str(api_settings.ray_auth_mode or "disabled"),
    }
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT],
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_deployment(
            str(api_settings.prefect_api_url), "process-job/process-job", process, log
        )
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.terminate()  # a Prefect runner may ignore the first SIGTERM
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_in_thread(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """Run ``app`` under uvicorn on 127.0.0.1:``port`` in a daemon thread; wait until it listens."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    return server, thread


def make_stack(settings: Settings, storage: Storage) -> Iterator[ApiStack]:
    """Start the API for ``settings``; stop it when the generator is closed."""
    app = create_app(settings, storage)
    port = free_port()
    server, thread = serve_in_thread(app, port)
    try:
        yield ApiStack(
            base_url=f"http://127.0.0.1:{port}",
            settings=settings,
            storage=storage,
            keys=ApiKeyStore(settings.api_keys_path, settings.api_pepper.get_secret_value()),
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def api_stack(api_settings: Settings, storage: Storage, job_runner: None) -> Iterator[ApiStack]:
    """The API under uvicorn on loopback, over the whole real stack."""
    yield from make_stack(api_settings, storage)


@pytest.fixture(scope="session")
def light_stack(s3_server: Any, storage: Storage) -> Iterator[ApiStack]:
    """The API under uvicorn over the real S3 server only (no Prefect, no Ray): for requests
    that never reach the pipeline (auth, validation, limits, tenant checks)."""
    yield from make_stack(s3_server.settings, storage)


@pytest.fixture
def api_tenant() -> str:
    """A fresh tenant name per test."""
    return f"api{secrets.token_hex(4)}"


def wait_for_state(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 180.0
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is in one of ``states``; return its body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["state"] in states:
            return body
        if body["state"] in TERMINAL:
            raise AssertionError(f"job ended {body['state']} instead of {states}: {body}")
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {body.get('state')} after {timeout} s: {body}")


def wait_for_progress(
    client: httpx.Client, job_id: str, done_at_least: int, timeout: float = 180.0
) -> dict[str, Any]:
    """Poll until the job is running with at least ``done_at_least`` slices finished."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["state"] == "running" and body["progress"]["done"] >= done_at_least:
            return body
        if body["state"] in TERMINAL:
            raise AssertionError(f"job ended {body['state']} before making progress: {body}")
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} made no progress in {timeout} s: {body}")
