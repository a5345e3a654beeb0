"""Serve the pipeline's deployments from this process: ``python -m pipelines.serve``.

``process-job/process-job`` runs one job (started by :func:`pipelines.jobs.submit_job`, the
webhook or ``ingest``); ``ingest/ingest`` polls the raw bucket on an interval schedule
(``MRDIFF_INGEST_INTERVAL_SECONDS``). Each flow run executes in its own subprocess, so a crash
in one job never takes the server down. At most one ``process-job`` run computes at a time
(the Ray pool is sized for the machine); further runs wait for the slot, visible in the UI.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.prefect_api import INGEST_FLOW, PROCESS_JOB_FLOW, prefect_api
from services.settings import Settings, get_settings

PROCESS_JOB_CONCURRENCY = 1


def deployments(settings: Settings) -> list[Any]:
    """The pipeline's deployments, ready for :func:`prefect.serve`."""
    from pipelines.ingest import ingest
    from pipelines.process_job import process_job

    config = PipelineConfig.from_settings(settings)
    return [
        process_job.to_deployment(
            name=PROCESS_JOB_FLOW,
            description="Reconstruct one job's study on the Ray pool and publish its results.",
            tags=["mrdiff"],
            concurrency_limit=PROCESS_JOB_CONCURRENCY,
        ),
        ingest.to_deployment(
            name=INGEST_FLOW,
            description="Poll the raw bucket and start one job per settled study.",
            tags=["mrdiff"],
            interval=timedelta(seconds=config.ingest_interval_seconds),
        ),
    ]


def main() -> None:
    """Register the deployments and execute their runs until interrupted."""
    from prefect import serve

    settings = get_settings()
    with prefect_api(settings):
        serve(*deployments(settings), print_starting_message=True)


if __name__ == "__main__":
    main()
