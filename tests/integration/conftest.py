"""Real local servers for integration tests, started once per test session.

Fixtures (reuse them; do not start your own S3 server or Ray cluster):

- ``s3_server``: a real nanio S3 server on 127.0.0.1 (subprocess, SigV4, files on disk);
  gives :class:`S3Server` with ``endpoint``, ``access_key``, ``secret_key`` and ``settings``
  (a :class:`~services.settings.Settings` pointing at it, data under a temp folder).
- ``storage``: :class:`~services.storage.Storage` on that server, buckets created. It is shared
  by the whole session: give each test its own tenant (the ``tenant`` fixture).
- ``tenant``: a fresh tenant name per test.
- ``ray_cluster``: a private Ray head of its own (``ray start --head --block``, as under ``mrdiff
  up``: 2 CPUs, token auth with a token of the session, no dashboard), joined by this process;
  gives :class:`~services.workers.RayConnection`. Other processes a test starts (served flow
  runs, the API) join it at ``ray_cluster.address``: the session exports ``RAY_AUTH_MODE`` and
  ``RAY_AUTH_TOKEN_PATH`` for them. Stopped through its own process at the end, never with
  ``ray stop``.
- the API fixtures of ``api_harness.py`` (registered here, so tests only name them):
  ``prefect_api_url``, ``api_settings``, ``job_runner``, ``api_stack`` (the API under uvicorn
  over S3, Prefect and Ray), ``light_stack`` (the API over S3 only) and ``api_tenant``.

Every test in this folder is marked ``integration``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from services.settings import Settings, load_settings
from services.stack.process import start_until_ready, stop_process
from services.stack.ray_head import ray_head_spec, write_ray_token
from services.storage import Storage
from services.storage.local_server import LocalS3Server, free_port, start_local_s3
from services.workers import RayConnection, connect_ray, disconnect_ray
from tests.integration.api_harness import (  # noqa: F401  (fixtures, registered by import)
    api_settings,
    api_stack,
    api_tenant,
    job_runner,
    light_stack,
    prefect_api_url,
)

RAY_TEST_CPUS = 2
RAY_TEST_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


class S3Server(NamedTuple):
    """A running local S3 server and how to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    settings: Settings
    process: LocalS3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real nanio server on a free loopback port, with per-session random keys."""
    data_dir = tmp_path_factory.mktemp("mrdiff-data")
    settings = load_settings(
        environment="development",
        data_dir=data_dir,
        s3_endpoint=f"127.0.0.1:{free_port()}",
        s3_access_key=f"test-{secrets.token_hex(4)}",
        s3_secret_key=secrets.token_urlsafe(24),
        s3_secure=False,
        ray_address=None,
    )
    with start_local_s3(settings) as server:
        yield S3Server(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            region=settings.s3_region,
            settings=settings,
            process=server,
        )


@pytest.fixture(scope="session")
def storage(s3_server: S3Server) -> Storage:
    """Storage on the session's S3 server, with the raw and results buckets created."""
    store = Storage.from_settings(s3_server.settings)
    store.ensure_buckets()
    return store


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayConnection]:
    """A Ray head of the session's own, started as ``mrdiff up`` starts one, and joined.

    A head of its own process (not ``ray.init()`` in this one) so that served flow runs and the
    API, which are other processes, join the same cluster as under ``mrdiff up``; see
    :mod:`services.stack.ray_head` for what makes its start reliable on a busy machine.
    """
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths are limited
    token = write_ray_token(temp / "auth_token")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    spec = ray_head_spec(
        port,
        cpus=RAY_TEST_CPUS,
        temp_dir=temp,
        log_dir=temp,
        object_store_bytes=RAY_TEST_OBJECT_STORE_BYTES,
        lean=True,
        env=auth,
    )
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)  # for this driver and every process a test starts
    try:
        running, _ = start_until_ready(spec, temp)  # on failure, Ray's logs stay in ``temp``
        try:
            settings = load_settings(
                environment="development", ray_address=f"127.0.0.1:{port}", ray_auth_mode="token"
            )
            yield connect_ray(settings, log_to_driver=False)
        finally:
            disconnect_ray()
            stop_process(running, spec.stop_timeout)
        shutil.rmtree(temp, ignore_errors=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
