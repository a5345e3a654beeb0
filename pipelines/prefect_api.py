"""Talking to the Prefect API from outside a flow: deployment names and starting runs.

``settings.prefect_api_url`` (``MRDIFF_PREFECT_API_URL``) wins over Prefect's own
``PREFECT_API_URL`` when set, so every mrdiff process reaches the same server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from services.settings import Settings

PROCESS_JOB_FLOW = "process-job"
INGEST_FLOW = "ingest"
PROCESS_JOB_DEPLOYMENT = f"{PROCESS_JOB_FLOW}/{PROCESS_JOB_FLOW}"
INGEST_DEPLOYMENT = f"{INGEST_FLOW}/{INGEST_FLOW}"


class PipelineUnavailableError(RuntimeError):
    """The Prefect server (or the deployment) could not take a new flow run."""


@contextlib.contextmanager
def prefect_api(settings: Settings) -> Iterator[None]:
    """Point Prefect's client at ``settings.prefect_api_url`` (if set) for the block."""
    if not settings.prefect_api_url:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        yield


def start_deployment_run(
    settings: Settings,
    deployment: str,
    parameters: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    scheduled_time: datetime | None = None,
    tags: list[str] | None = None,
) -> str:
    """Create a flow run of ``deployment`` without waiting for it; returns the flow-run id.

    Linked as a subflow when called inside a flow run (ingest -> process-job). Raises
    :class:`PipelineUnavailableError` when the server or deployment cannot be reached.
    """
    from prefect.deployments import run_deployment

    try:
        with prefect_api(settings):
            flow_run = run_deployment(
                deployment,
                parameters=parameters,
                timeout=0,
                idempotency_key=idempotency_key,
                scheduled_time=scheduled_time,
                tags=tags,
                _sync=True,  # type: ignore[call-arg]  # never a coroutine, even in an event loop
            )
    except Exception as error:  # network errors, 404 for a missing deployment, ...
        raise PipelineUnavailableError(
            f"could not start a {deployment} flow run: {type(error).__name__}: {error}"
        ) from error
    return str(cast(Any, flow_run).id)
