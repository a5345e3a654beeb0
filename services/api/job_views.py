"""Job records as clients see them, and purging a job's results.

Purging deletes the published results of a job (never its raw inputs, never the record), empties
the record's artefact list, and releases the job's processing key so the same input submitted
again is processed again instead of answering with a job that no longer has results.
"""

from __future__ import annotations

import json
from dataclasses import replace

from services.api.schemas import JobLinks, JobPublic, ProgressPublic
from services.storage import Storage
from services.storage.jobs import JobRecord
from services.storage.keys import JOB_RECORD_NAME, job_prefix, processing_index_key


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
        links=JobLinks(self=base, results=f"{base}/results", viewer=f"/viewer/{record.job_id}"),
    )


def purge_results(storage: Storage, record: JobRecord) -> JobRecord:
    """Delete the job's published results and release its processing key; returns the record."""
    prefix = job_prefix(record.tenant, record.job_id)
    doomed = [
        item.key
        for item in storage.objects.list(storage.results_bucket, prefix)
        if item.key != prefix + JOB_RECORD_NAME
    ]
    storage.objects.delete_many(storage.results_bucket, doomed)
    if record.processing_key:
        index_key = processing_index_key(record.tenant, record.processing_key)
        with storage.mutex.hold(index_key):
            data = storage.objects.find_bytes(storage.results_bucket, index_key)
            if data is not None and json.loads(data).get("job_id") == record.job_id:
                storage.objects.delete(storage.results_bucket, index_key)
    return storage.jobs.update(
        record.tenant, record.job_id, lambda current: replace(current, artefacts=())
    )
