"""Storage's named operations the API relies on, against the real nanio server: bucket checks,
job pages and counts, purging results, and presigned URLs for a public endpoint."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import httpx
import pytest

from services.storage import JobState, ObjectNotFoundError, Storage, processing_key
from tests.integration.conftest import S3Server

MODEL = {"prior": "ab" * 32}


def succeeded_job(storage: Storage, tenant: str, raw: str, slices: int = 2) -> str:
    """A job that ran ``slices`` slices and published two results."""
    key = processing_key(hashlib.sha256(raw.encode()).hexdigest(), {}, MODEL, tenant)
    job_id = storage.jobs.create(tenant, input_keys=[raw], processing_key=key).record.job_id
    storage.jobs.start(tenant, job_id, total=slices)
    with storage.stage_results(tenant, job_id) as staged:
        staged.put_bytes("reconstruction.h5", b"recon")
        staged.put_bytes("report.json", b"{}")
        names = staged.publish()
    storage.jobs.succeed(tenant, job_id, artefacts=names)
    return job_id


def test_missing_buckets_names_the_ones_that_do_not_exist(storage: Storage) -> None:
    assert storage.missing_buckets() == []
    elsewhere = Storage(
        storage.objects, raw_bucket="mrdiff-absent-raw", results_bucket=storage.results_bucket
    )
    assert elsewhere.missing_buckets() == ["mrdiff-absent-raw"]


def test_job_pages_run_newest_first_with_a_cursor(storage: Storage, tenant: str) -> None:
    ids = [
        storage.jobs.create(tenant, input_keys=[f"{tenant}/s/{n}.h5"]).record.job_id
        for n in range(5)
    ]
    storage.jobs.cancel(tenant, ids[1])
    first = storage.job_page(tenant, limit=2)
    assert [r.job_id for r in first.records] == sorted(ids, reverse=True)[:2]
    assert first.next_cursor == first.records[-1].job_id
    rest = storage.job_page(tenant, limit=10, before=first.next_cursor)
    assert [r.job_id for r in rest.records] == sorted(ids, reverse=True)[2:]
    assert rest.next_cursor is None
    cancelled = storage.job_page(tenant, states=[JobState.CANCELLED])
    assert [r.job_id for r in cancelled.records] == [ids[1]]
    assert storage.job_page(tenant + "x").records == []


def test_job_counts_cover_every_state_and_tenant(storage: Storage, tenant: str) -> None:
    before = storage.job_counts()
    assert set(before.by_state) == set(JobState)
    succeeded_job(storage, tenant, f"{tenant}/s/a.h5", slices=3)
    storage.jobs.create(tenant + "b", input_keys=["k"])
    after = storage.job_counts()
    assert after.by_state[JobState.SUCCEEDED] == before.by_state[JobState.SUCCEEDED] + 1
    assert after.by_state[JobState.QUEUED] == before.by_state[JobState.QUEUED] + 1
    assert after.slices_processed == before.slices_processed + 3


def test_purge_removes_results_keeps_inputs_and_releases_the_key(
    storage: Storage, tenant: str
) -> None:
    raw = storage.put_raw(tenant, "s/b.h5", b"input")
    job_id = succeeded_job(storage, tenant, raw)
    record = storage.jobs.get(tenant, job_id)
    assert record.processing_key and storage.find_processed(tenant, record.processing_key)

    purged = storage.purge_results(tenant, job_id)
    assert purged.state is JobState.SUCCEEDED and purged.artefacts == ()
    assert purged.purged_at is not None and purged.purged_at >= record.updated_at
    assert storage.list_results(tenant, job_id) == []
    remaining = storage.objects.list(storage.results_bucket, f"{tenant}/jobs/{job_id}/")
    assert [item.key for item in remaining] == [f"{tenant}/jobs/{job_id}/job.json"]
    assert storage.raw_info(raw) is not None, "raw inputs are never purged"
    assert storage.find_processed(tenant, record.processing_key) is None
    again = storage.jobs.create(tenant, input_keys=[raw], processing_key=record.processing_key)
    assert again.created and again.record.job_id != job_id
    assert storage.purge_results(tenant, job_id).purged_at is not None  # idempotent
    with pytest.raises(ObjectNotFoundError):
        storage.purge_results(tenant, "20250101T000000Z-000000000000")


def test_presigned_urls_are_signed_for_the_public_endpoint(
    s3_server: S3Server, storage: Storage, tenant: str
) -> None:
    port = s3_server.endpoint.rsplit(":", 1)[1]
    public = s3_server.settings.model_copy(
        update={"s3_public_endpoint": f"http://localhost:{port}"}
    )
    outside = Storage.from_settings(public)
    key, url = outside.presigned_upload_url(tenant, "big/scan.h5")
    assert urlsplit(url).netloc == f"localhost:{port}"
    assert httpx.put(url, content=b"from outside").status_code == 200
    assert storage.objects.get_bytes(storage.raw_bucket, key) == b"from outside"
    _, inside = storage.presigned_upload_url(tenant, "big/other.h5")
    assert urlsplit(inside).netloc == s3_server.endpoint
