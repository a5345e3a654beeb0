"""Jobs by state and slices processed, counted over every job record in the results bucket."""

from __future__ import annotations

from collections import Counter

from services.api.metrics import JobStats
from services.storage import Storage
from services.storage.jobs import JobRecord
from services.storage.keys import JOB_RECORD_NAME


def read_job_stats(storage: Storage) -> JobStats:
    """Read every ``<tenant>/jobs/<job_id>/job.json`` and count states and finished slices."""
    states: Counter[str] = Counter()
    slices = 0
    for item in storage.objects.list(storage.results_bucket):
        parts = item.key.split("/")
        if len(parts) != 4 or parts[1] != "jobs" or parts[3] != JOB_RECORD_NAME:
            continue
        data = storage.objects.find_bytes(storage.results_bucket, item.key)
        if data is None:
            continue
        record = JobRecord.from_json(data)
        states[record.state.value] += 1
        slices += record.progress_done
    return JobStats(jobs_by_state=dict(states), slices_processed=slices)
