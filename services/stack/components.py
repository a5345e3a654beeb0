"""The processes of the local stack, in start order: one function per process.

Each function takes the :class:`StackPlan` and returns a :class:`ProcessSpec`, or None when the
service is external (an S3 endpoint, Prefect API or Ray address that is not on loopback is
used as configured and not started here). To add a process, write its function and add it to
:data:`COMPONENTS` (one line); its URLs are printed by ``mrdiff up`` and ``mrdiff status``.

Everything binds 127.0.0.1 except Ray: Ray 2.60 registers the head under the machine's address
and its GCS, raylet and agents listen on every interface (ports chosen in
:mod:`services.stack.ray_head`); token authentication (a random token under the stack's folder)
guards them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from services.api.stack_process import api_server
from services.settings import Settings
from services.stack.process import (
    ProcessSpec,
    ReadyCheck,
    all_of,
    console_script,
    http_json,
    http_ok,
    tcp_open,
)
from services.stack.ray_head import RAY_OBJECT_STORE_BYTES, ray_head_spec, write_ray_token
from services.storage.objects import make_minio_client

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PREFECT_PORT = 4200
DEFAULT_RAY_PORT = 6379
REPO_ROOT = Path(__file__).resolve().parents[2]


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port) if port.isdigit() else default_port


def is_loopback(host: str) -> bool:
    """True for addresses of this machine only."""
    return host in LOOPBACK_HOSTS


@dataclass(frozen=True)
class StackPlan:
    """Where every part of the local stack lives: addresses, folders, environment."""

    settings: Settings
    prefect_api_url: str
    ray_address: str

    @classmethod
    def from_settings(cls, settings: Settings) -> StackPlan:
        prefect = settings.prefect_api_url or f"http://127.0.0.1:{DEFAULT_PREFECT_PORT}/api"
        ray_address = settings.ray_address or f"127.0.0.1:{DEFAULT_RAY_PORT}"
        return cls(settings=settings, prefect_api_url=prefect.rstrip("/"), ray_address=ray_address)

    # -- folders ------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        """Pid file, logs and the Ray token of the stack."""
        return self.settings.data_dir / "stack"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME: the SQLite database, profiles and task-result cache."""
        return self.settings.data_dir / "prefect"

    @property
    def ray_temp_dir(self) -> Path:
        return self.settings.data_dir / "ray"

    @property
    def ray_token_path(self) -> Path:
        return self.state_dir / "ray_auth_token"

    # -- addresses ----------------------------------------------------------------------------
    @property
    def prefect_ui_url(self) -> str:
        parts = urlsplit(self.prefect_api_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def ray_dashboard_port(self) -> int:
        """``MRDIFF_RAY_DASHBOARD_PORT``."""
        return self.settings.ray_dashboard_port

    @property
    def ray_dashboard_url(self) -> str:
        host, _ = _host_port(self.ray_address, DEFAULT_RAY_PORT)
        return f"http://{host}:{self.ray_dashboard_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def ensure_ray_token(self) -> Path:
        """The stack's Ray auth token file (created with a random token, mode 0600)."""
        return write_ray_token(self.ray_token_path)

    def environment(self) -> dict[str, str]:
        """Variables every stack process (and every client of the stack) runs with."""
        settings = self.settings
        return {
            "MRDIFF_DATA_DIR": str(settings.data_dir),
            "MRDIFF_S3_ENDPOINT": settings.s3_endpoint,
            "MRDIFF_S3_SECURE": "true" if settings.s3_secure else "false",
            "MRDIFF_PREFECT_API_URL": self.prefect_api_url,
            "MRDIFF_RAY_ADDRESS": self.ray_address,
            "MRDIFF_RAY_AUTH_MODE": "token",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path),
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }


def deployment_served(url: str, within_seconds: float = 60.0) -> ReadyCheck:
    """A readiness check: the deployment at ``url`` was polled by a runner just now."""

    def check() -> bool:
        document = http_json(url)
        polled = document.get("last_polled") if isinstance(document, dict) else None
        if not isinstance(polled, str):
            return False
        age = datetime.now(UTC) - datetime.fromisoformat(polled.replace("Z", "+00:00"))
        return age.total_seconds() < within_seconds

    return check


# -- the processes --------------------------------------------------------------------------------
def s3_server(plan: StackPlan) -> ProcessSpec | None:
    """nanio on loopback, objects under ``<data_dir>/s3``, keys from settings."""
    settings = plan.settings
    host, port = _host_port(settings.s3_endpoint, 9000)
    if not is_loopback(host):
        return None
    client = make_minio_client(settings)

    def answers_signed_requests() -> bool:
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    return ProcessSpec(
        name="s3",
        argv=[
            sys.executable,
            "-m",
            "nanio",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(settings.s3_data_dir),
            "--region",
            settings.s3_region,
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={
            "NANIO_ACCESS_KEY": settings.s3_access_key,
            "NANIO_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        },
        ready=all_of(tcp_open("127.0.0.1", port), answers_signed_requests),
        urls={"S3 endpoint": settings.s3_url},
        ready_timeout=30.0,
        ports=(port,),
    )


def prefect_server(plan: StackPlan) -> ProcessSpec | None:
    """The Prefect API and UI, SQLite under ``<data_dir>/prefect``."""
    parts = urlsplit(plan.prefect_api_url)
    if not is_loopback(parts.hostname or ""):
        return None
    port = parts.port or DEFAULT_PREFECT_PORT
    return ProcessSpec(
        name="prefect",
        argv=[
            console_script("prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--analytics-off",
        ],
        ready=http_ok(f"{plan.prefect_api_url}/health"),
        urls={"Prefect UI": plan.prefect_ui_url, "Prefect API": plan.prefect_api_url},
        # a first start migrates a fresh SQLite database: minutes on a busy 2-core machine
        ready_timeout=300.0,
        ports=(port,),
    )


def ray_head(plan: StackPlan) -> ProcessSpec | None:
    """The stack's Ray head node (token auth) with its dashboard on loopback."""
    host, port = _host_port(plan.ray_address, DEFAULT_RAY_PORT)
    if not is_loopback(host):
        return None
    plan.ensure_ray_token()
    spec = ray_head_spec(
        port,
        cpus=plan.settings.ray_num_cpus or os.cpu_count() or 1,
        temp_dir=plan.ray_temp_dir,
        log_dir=plan.log_dir,
        object_store_bytes=RAY_OBJECT_STORE_BYTES,
        dashboard_port=plan.ray_dashboard_port,
    )
    return dataclasses.replace(
        spec, urls={"Ray dashboard": plan.ray_dashboard_url, "Ray address": plan.ray_address}
    )


def pipeline_server(plan: StackPlan) -> ProcessSpec:
    """The pipeline's deployments (``process-job``, scheduled ``ingest``) served by Prefect."""
    return ProcessSpec(
        name="pipelines",
        argv=[sys.executable, "-m", "pipelines.serve"],
        ready=deployment_served(f"{plan.prefect_api_url}/deployments/name/process-job/process-job"),
        urls={"Prefect deployments": f"{plan.prefect_ui_url}/deployments"},
        cwd=REPO_ROOT,
        ready_timeout=180.0,
    )


Component = Callable[[StackPlan], ProcessSpec | None]
COMPONENTS: tuple[Component, ...] = (
    s3_server,
    prefect_server,
    ray_head,
    pipeline_server,
    api_server,
)
"""Started in this order, stopped in reverse. Add a process here (one line)."""
