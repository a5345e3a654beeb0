"""Readiness checks for /readyz: can this API reach object storage, Prefect and Ray right now?

Each check is a small blocking probe with a short timeout that returns a :class:`Check`; none of
them raises. The API process never joins the Ray cluster (it holds no models and runs no tasks):
it only confirms that the cluster's address answers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

from services.settings import Settings

PROBE_TIMEOUT_SECONDS = 2.0
RAY_CURRENT_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")


class Check(NamedTuple):
    """Outcome of one probe."""

    ok: bool
    detail: str


def run_check(probe: Callable[[], Check]) -> Check:
    """Run ``probe``; an exception becomes a failed check naming it."""
    try:
        return probe()
    except Exception as error:
        return Check(False, f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")


def prefect_api_url(settings: Settings) -> str | None:
    """The Prefect API this process talks to: settings first, then Prefect's own profile."""
    if settings.prefect_api_url:
        return settings.prefect_api_url
    try:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    except Exception:
        return None
    return str(url) if url else None


def check_prefect(settings: Settings) -> Check:
    """GET <api>/health on the Prefect server."""
    url = prefect_api_url(settings)
    if not url:
        return Check(False, "no Prefect API configured (MRDIFF_PREFECT_API_URL or PREFECT_API_URL)")
    response = httpx.get(url.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_SECONDS)
    if response.status_code != 200:
        return Check(False, f"{url} answered {response.status_code}")
    return Check(True, url)


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """Host and port of a Ray cluster address (``host:port``, ``ray://host:port``, ``auto``)."""
    if not address:
        return None
    if address == "auto":
        try:
            address = RAY_CURRENT_CLUSTER_FILE.read_text().strip()
        except OSError:
            return None
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.hostname is None:
        return None
    default_port = 10001 if parts.scheme == "ray" else 6379
    return parts.hostname, parts.port or default_port


def check_ray(settings: Settings) -> Check:
    """Open a TCP connection to the configured Ray cluster (GCS or Ray Client port)."""
    if settings.ray_address is None:
        return Check(True, "local Ray cluster: started by the workers that need it")
    endpoint = ray_endpoint(settings.ray_address)
    if endpoint is None:
        return Check(False, f"cannot find Ray cluster {settings.ray_address!r}")
    with socket.create_connection(endpoint, timeout=PROBE_TIMEOUT_SECONDS):
        return Check(True, f"{endpoint[0]}:{endpoint[1]}")
