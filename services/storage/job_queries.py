"""Read-only questions over many job records: one tenant's jobs page by page, and counts by state.

Job ids start with their creation time (``20250101T120000Z-...``), so key order is age order and
a page is read newest first, fetching records only until it is full. Counts read every record
(``<tenant>/jobs/<job_id>/job.json``) of every tenant; callers cache them (``/metrics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from services.storage import keys
from services.storage.jobs import JobRecord, JobState, JobStore
from services.storage.objects import ObjectStore


class JobPage(NamedTuple):
    """One page of a tenant's jobs, newest first; ``next_cursor`` continues it (None: last)."""

    records: list[JobRecord]
    next_cursor: str | None


class JobCounts(NamedTuple):
    """Jobs per state (every state present, zeros included) and slices finished, all tenants."""

    by_state: dict[JobState, int]
    slices_processed: int


def _record_job_id(key: str) -> str | None:
    """``<tenant>/jobs/<job_id>/job.json`` -> ``job_id``; None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and parts[1] == "jobs" and parts[3] == keys.JOB_RECORD_NAME:
        return parts[2]
    return None


def job_ids(store: ObjectStore, bucket: str, tenant: str) -> list[str]:
    """Ids of the tenant's jobs, newest first (one listing, no record read)."""
    prefix = keys.jobs_prefix(tenant)
    found = (_record_job_id(item.key) for item in store.list(bucket, prefix))
    return sorted((job_id for job_id in found if job_id), reverse=True)


def page_jobs(
    jobs: JobStore,
    tenant: str,
    *,
    states: Iterable[JobState] | None = None,
    limit: int = 50,
    before: str | None = None,
) -> JobPage:
    """Up to ``limit`` of the tenant's jobs older than job id ``before``, optionally only those
    in ``states``; reads records only until the page is full."""
    wanted = None if states is None else frozenset(states)
    ids = job_ids(jobs.store, jobs.bucket, tenant)
    if before is not None:
        ids = [job_id for job_id in ids if job_id < before]
    records: list[JobRecord] = []
    for position, job_id in enumerate(ids):
        record = jobs.find(tenant, job_id)
        if record is None or (wanted is not None and record.state not in wanted):
            continue
        records.append(record)
        if len(records) == max(1, limit):
            more = position + 1 < len(ids)
            return JobPage(records, next_cursor=job_id if more else None)
    return JobPage(records, next_cursor=None)


def count_jobs(store: ObjectStore, bucket: str) -> JobCounts:
    """Jobs per state and slices finished, over every job record of every tenant."""
    states: Counter[JobState] = Counter({state: 0 for state in JobState})
    slices = 0
    for item in store.list(bucket):
        if _record_job_id(item.key) is None:
            continue
        data = store.find_bytes(bucket, item.key)
        if data is None:  # deleted since the listing
            continue
        record = JobRecord.from_json(data)
        states[record.state] += 1
        slices += record.progress_done
    return JobCounts(by_state=dict(states), slices_processed=slices)
