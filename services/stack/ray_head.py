"""A Ray head node as a process of its own (``ray start --head --block``).

``mrdiff up`` runs one (token auth, dashboard on loopback) and so do the integration tests
(``lean``: no dashboard, no autoscaler monitor, no log monitor), so that separate processes
(served Prefect flow runs, the API) can join the cluster the way they do in production.

Starting a head reliably on a busy machine takes three things Ray does not do by itself:

- every port of the node's own services is chosen here, not left to Ray: its fixed defaults
  for the dashboard agent (52365) and the Ray client server (10001) collide with any other Ray
  on the machine (another test session, a ``mrdiff up`` stack);
- the raylet waits only about 15 s for the dashboard agent to report its HTTP port (a file in
  the session folder) and aborts the node when it is late ("Timed out waiting for file
  .../dashboard_agent_listen_port_*" in raylet.out). The agent imports much of Ray before it
  reports, which takes far longer than that when the node runs beside higher-priority work (a
  training run here). The port is ours, so :func:`announce_agent_port` reports it for the
  agent, with Ray's own ``persist_port``, as soon as the raylet is up; the agent reports the
  same port again once it listens. For the other agent ports, given ones are not waited for;
- a start that fails anyway is tried again (``start_attempts``), and readiness means ``ray
  start`` said the node registered (:data:`RAY_STARTED` in its log), not just an open port.
"""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.stack.process import (
    ProcessSpec,
    ReadyCheck,
    console_script,
    http_ok,
    log_says,
    tcp_open,
)
from services.storage.local_server import free_port

RAY_OBJECT_STORE_BYTES = 512 * 1024 * 1024
RAY_STARTED = "Ray runtime started."
"""What ``ray start`` prints once its raylet has registered with the GCS."""


def write_ray_token(path: Path) -> Path:
    """A Ray auth token file at ``path`` (a random token, mode 0600) unless one exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as token:
            token.write(secrets.token_hex(32))
    return path


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _raylet_node_id(session_dir: Path) -> str | None:
    """Node id of the raylet running for ``session_dir`` (from its command line), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        flags = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
        folder = flags.get("session_dir")
        if folder and "node_id" in flags and Path(folder).resolve() == session_dir:
            return flags["node_id"]
    return None


def announce_agent_port(temp_dir: Path, port: int) -> bool:
    """Report the dashboard agent's HTTP ``port`` to the raylet of the newest session under
    ``temp_dir`` unless the agent did already (see module docs); True once it is reported."""
    try:
        session_dir = (temp_dir / "session_latest").resolve(strict=True)
    except OSError:
        return False
    node_id = _raylet_node_id(session_dir)
    if node_id is None:
        return False
    raylet: Any = importlib.import_module("ray._raylet")  # its .pyi stub lacks these two
    name = raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME
    if not any(session_dir.glob(f"{name}_{node_id}*")):
        raylet.persist_port(str(session_dir), node_id, name, port)
    return True


@dataclass(frozen=True)
class HeadReady:
    """Ready when ``ray start`` said the node started and the GCS (and dashboard) answer;
    until then, each check also reports the agent's port for it (:func:`announce_agent_port`).
    """

    started: ReadyCheck
    answering: tuple[ReadyCheck, ...]
    temp_dir: Path
    agent_port: int

    def __call__(self) -> bool:
        if not self.started():
            announce_agent_port(self.temp_dir, self.agent_port)
            return False
        return all(check() for check in self.answering)


def ray_head_spec(
    port: int,
    *,
    cpus: int,
    temp_dir: Path,
    log_dir: Path,
    object_store_bytes: int = RAY_OBJECT_STORE_BYTES,
    dashboard_port: int | None = None,
    lean: bool = False,
    env: Mapping[str, str] | None = None,
) -> ProcessSpec:
    """``ray start --head --block`` with its GCS on ``port``, logging to ``<log_dir>/ray.log``.

    ``dashboard_port`` adds the dashboard (on 127.0.0.1); ``lean`` leaves out the autoscaler
    monitor and the log monitor (fewer processes to start; tests). ``temp_dir`` holds Ray's
    sessions (keep its path short: Ray's socket paths are limited to about 100 characters).
    """
    node_manager, agent_http, agent_grpc, metrics, runtime_env, client = _distinct_free_ports(6)
    temp_dir = temp_dir.resolve()
    dashboard = (
        [
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
        ]
        if dashboard_port is not None
        else ["--include-dashboard", "false"]
    )
    answering = [tcp_open("127.0.0.1", port)]
    if dashboard_port is not None:
        answering.append(http_ok(f"http://127.0.0.1:{dashboard_port}"))
    return ProcessSpec(
        name="ray",
        argv=[
            console_script("ray"),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(cpus),
            "--object-store-memory",
            str(object_store_bytes),
            *dashboard,
            "--node-manager-port",
            str(node_manager),
            "--dashboard-agent-listen-port",
            str(agent_http),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--ray-client-server-port",
            str(client),
            *(["--no-monitor", "--include-log-monitor", "false"] if lean else []),
            "--disable-usage-stats",
            "--temp-dir",
            str(temp_dir),
        ],
        ready=HeadReady(
            started=log_says(log_dir / "ray.log", RAY_STARTED),
            answering=tuple(answering),
            temp_dir=temp_dir,
            agent_port=agent_http,
        ),
        env=dict(env or {}),
        ready_timeout=240.0,
        stop_timeout=45.0,
        ports=(port,) if dashboard_port is None else (port, dashboard_port),
        start_attempts=3,
    )
