"""Joining a Ray cluster, or starting a local one, from :class:`~services.settings.Settings`.

``settings.ray_address`` set: join that cluster (``"auto"``, ``"host:6379"``, ``"ray://..."``).
Unset: start a private local cluster on loopback (``address="local"``, so a cluster someone
else started on this machine is never joined by accident), without the dashboard.

Ray 2.60 on Linux replaces ``_node_ip_address="127.0.0.1"`` by the machine's routable address
and binds GCS and raylets on every interface. Its single-machine mode (what
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` selects, the default on macOS/Windows) keeps every Ray
process on 127.0.0.1; :func:`connect_ray` switches it on, in this process only, for the local
cluster it starts, which matters all the more since that cluster runs without token auth.

Ray 2.60 turns token authentication on for new local clusters unless ``RAY_AUTH_MODE`` says
otherwise. ``settings.ray_auth_mode`` decides; when it is unset, a local development cluster
(loopback only) runs with auth disabled and everything else uses tokens
(``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``). An explicit ``RAY_AUTH_MODE`` in the
environment is respected when ``settings.ray_auth_mode`` is unset.

Never ``ray stop`` (it kills every Ray process on the machine by name); leave through
:func:`disconnect_ray`, which shuts down only what this driver started.

Joining ``host:port`` first checks that the GCS there accepts connections (for up to
``connect_timeout`` seconds): ``ray.init`` itself waits forever for a GCS that is gone (a head
whose start failed), which left flow runs hanging with their job "running" and every later
job queued behind them. Without an answer, :class:`~services.workers.WorkerError` says so.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from typing import Any, NamedTuple

from services.settings import Settings
from services.workers.errors import WorkerError

LOOPBACK = "127.0.0.1"
NAMESPACE = "mrdiff"
CONNECT_TIMEOUT_SECONDS = 60.0


class RayConnection(NamedTuple):
    """What :func:`connect_ray` connected to."""

    address: str
    started_local: bool
    auth_mode: str
    cpus: float
    gpus: float


def ray_auth_mode(settings: Settings) -> str:
    """The ``RAY_AUTH_MODE`` this process should use for ``settings``."""
    if settings.ray_auth_mode is not None:
        return settings.ray_auth_mode
    explicit = os.environ.get("RAY_AUTH_MODE")
    if explicit:
        return explicit.lower()
    local_development = settings.is_local_ray and settings.environment == "development"
    return "disabled" if local_development else "token"


def gcs_answers(address: str, timeout: float) -> bool:
    """True when something accepts TCP connections at ``host:port`` within ``timeout`` seconds
    (True for addresses that are not ``host:port``: ``auto``, ``ray://...``)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def connect_ray(
    settings: Settings,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    log_to_driver: bool = True,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> RayConnection:
    """Join ``settings.ray_address`` or start a local cluster; reuse an existing connection.

    ``num_cpus`` (else ``settings.ray_num_cpus``) and ``object_store_memory`` (bytes) size a
    locally started cluster and are ignored when joining one. Raises
    :class:`~services.workers.WorkerError` when nothing answers at the address.
    """
    import ray

    mode = ray_auth_mode(settings)
    if not ray.is_initialized():
        if settings.ray_address and not gcs_answers(settings.ray_address, connect_timeout):
            raise WorkerError(
                f"no Ray cluster answers at {settings.ray_address} (after "
                f"{connect_timeout:.0f} s); is its head running? (`mrdiff status`)"
            )
        _use_auth_mode(mode)
        if settings.ray_address:
            ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=log_to_driver)
            started_local = False
        else:
            _single_machine_mode()
            ray.init(
                address="local",
                num_cpus=num_cpus or settings.ray_num_cpus,
                object_store_memory=object_store_memory,
                namespace=NAMESPACE,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                log_to_driver=log_to_driver,
            )
            started_local = True
    else:
        started_local = False
    address = str(ray.get_runtime_context().gcs_address)
    resources = ray.cluster_resources()
    return RayConnection(
        address=address,
        started_local=started_local,
        auth_mode=mode,
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
    )


def _use_auth_mode(mode: str) -> None:
    """Make ``RAY_AUTH_MODE`` (and ``RAY_AUTH_TOKEN[_PATH]``) count in this process from now on.

    Ray copies them into its config when ``ray`` is first imported and caches the token once
    loaded, so a process that imported ray before they were set (a test session, the API)
    would connect with the mode and token of that moment ("Authentication token is missing or
    incorrect" from a token cluster). Re-reading them is what Ray's own tests do.
    """
    os.environ["RAY_AUTH_MODE"] = mode
    raylet: Any = importlib.import_module("ray._raylet")  # its .pyi stub lacks these
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


_saved_cluster_flag: list[bool] = []


def _single_machine_mode() -> None:
    """Make Ray bind the cluster this process starts on loopback only (see module docstring).

    Only this process's copy of the flag changes (it is read when the head node picks its IP,
    and every Ray process of the new cluster inherits that IP); the environment is left alone
    so that a ``ray start`` launched later from this process still works.
    """
    from ray._private import ray_constants

    if not _saved_cluster_flag:
        _saved_cluster_flag.append(ray_constants.ENABLE_RAY_CLUSTER)
    ray_constants.ENABLE_RAY_CLUSTER = False


def _restore_cluster_mode() -> None:
    from ray._private import ray_constants

    if _saved_cluster_flag:
        ray_constants.ENABLE_RAY_CLUSTER = _saved_cluster_flag.pop()


def disconnect_ray() -> None:
    """Disconnect this driver; a local cluster it started shuts down with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _restore_cluster_mode()
