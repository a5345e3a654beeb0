"""Job records as clients see them."""

from __future__ import annotations

from services.api.schemas import JobLinks, JobPublic, ProgressPublic
from services.storage.jobs import JobRecord


def job_public(record: JobRecord) -> JobPublic:
    """The client's view of a job record (relative links, so it works behind any proxy)."""
    total, done = record.progress_total, min(record.progress_done, record.progress_total)
    base = f"/v1/jobs/{record.job_id}"
    return JobPublic(
        id=record.job_id,
        state=record.state.value,
        created_at=record.created_at,
        updated_at=record.updated_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        progress=ProgressPublic(
            done=done, total=total, fraction=round(done / total, 4) if total else 0.0
        ),
        timings=dict(record.timings),
        error=record.error,
        input_keys=list(record.input_keys),
        options=dict(record.options),
        idempotency_key=record.idempotency_key,
        purged_at=record.purged_at,
        links=JobLinks(self=base, results=f"{base}/results", viewer=f"/viewer/{record.job_id}"),
    )
