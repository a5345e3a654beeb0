"""``Storage``: everything mrdiff keeps in object storage, behind one small facade.

Build it with :meth:`Storage.from_settings`; the key layout is documented in
:mod:`services.storage.keys`. Job records live in :attr:`Storage.jobs`
(:class:`~services.storage.jobs.JobStore`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.recon.errors import InputError
from services.settings import Settings
from services.storage import inbox, keys
from services.storage.errors import ConflictError
from services.storage.hashing import processing_key
from services.storage.job_queries import JobCounts, JobPage, count_jobs, page_jobs
from services.storage.jobs import JobRecord, JobState, JobStore, utc_now
from services.storage.mutex import KeyMutex
from services.storage.objects import ObjectInfo, ObjectStore, make_minio_client
from services.storage.results import ResultObject, StagedResults
from services.storage.retry import RetryPolicy

MAX_PRESIGN = timedelta(days=7)


class Storage:
    """The raw and results buckets of one deployment."""

    def __init__(self, objects: ObjectStore, raw_bucket: str, results_bucket: str) -> None:
        self.objects = objects
        self.raw_bucket = raw_bucket
        self.results_bucket = results_bucket
        self.mutex = KeyMutex(objects, results_bucket)
        self.jobs = JobStore(objects, results_bucket, self.mutex)

    @classmethod
    def from_settings(cls, settings: Settings, retry: RetryPolicy | None = None) -> Storage:
        """Storage for the endpoint, keys and bucket names in ``settings``."""
        presign = make_minio_client(settings, public=True) if settings.s3_public_endpoint else None
        return cls(
            ObjectStore(make_minio_client(settings), retry, presign_client=presign),
            raw_bucket=settings.raw_bucket,
            results_bucket=settings.results_bucket,
        )

    def ensure_buckets(self) -> list[str]:
        """Create the raw and results buckets if missing; returns the ones created now."""
        return [
            bucket
            for bucket in (self.raw_bucket, self.results_bucket)
            if self.objects.ensure_bucket(bucket)
        ]

    def missing_buckets(self) -> list[str]:
        """The raw and results buckets that do not exist, each asked once (no retries, so a
        readiness probe answers fast); raises when the store does not answer."""
        return [
            bucket
            for bucket in (self.raw_bucket, self.results_bucket)
            if not self.objects.bucket_exists(bucket, retry=False)
        ]

    # -- raw inputs ---------------------------------------------------------------------------
    def put_raw(
        self,
        tenant: str,
        relative: str,
        data: bytes | None = None,
        *,
        path: str | Path | None = None,
    ) -> str:
        """Store an input (``data`` or the file at ``path``) at ``<tenant>/<relative>``."""
        key = keys.raw_key(tenant, relative)
        if (data is None) == (path is None):
            raise InputError("give exactly one of data and path")
        if path is not None:
            self.objects.put_file(self.raw_bucket, key, path)
        else:
            assert data is not None
            self.objects.put_bytes(self.raw_bucket, key, data)
        return key

    def raw_info(self, raw_key: str) -> ObjectInfo | None:
        """Size, ETag and time of an input, or None."""
        return self.objects.stat(self.raw_bucket, raw_key)

    def raw_sha256(self, raw_key: str) -> str:
        """sha256 of an input's content, streamed from the store."""
        return self.objects.sha256(self.raw_bucket, raw_key)

    def download_raw(self, raw_key: str, path: str | Path) -> Path:
        """Save an input to a local file (atomically)."""
        return self.objects.download(self.raw_bucket, raw_key, path)

    def list_raw(self, tenant: str | None = None) -> list[inbox.RawObject]:
        """All inputs in the inbox (quarantined and reserved keys left out)."""
        return inbox.list_raw(self.objects, self.raw_bucket, tenant)

    def list_new_raw(
        self,
        marker: str | None = None,
        *,
        tenant: str | None = None,
        overlap: timedelta = inbox.DEFAULT_OVERLAP,
    ) -> inbox.InboxListing:
        """Inputs new since ``marker`` (an opaque string from the previous call)."""
        return inbox.list_new_raw(
            self.objects, self.raw_bucket, marker, tenant=tenant, overlap=overlap
        )

    def quarantine(self, raw_key: str, reason: str) -> inbox.QuarantinedObject:
        """Move an input to ``<tenant>/_quarantine/...`` with a ``reason.json``."""
        return inbox.quarantine(self.objects, self.raw_bucket, raw_key, reason)

    # -- dedupe ---------------------------------------------------------------------------------
    def processing_key_for(
        self,
        raw_key: str,
        options: Any,
        model_sha256: str | dict[str, str],
        content_sha256: str | None = None,
    ) -> str:
        """Processing key of an input (hashing its content unless ``content_sha256`` is given)."""
        tenant = keys.parse_raw_key(raw_key).tenant
        digest = content_sha256 or self.raw_sha256(raw_key)
        return processing_key(digest, options, model_sha256, tenant)

    def find_processed(self, tenant: str, key: str) -> JobRecord | None:
        """The succeeded job that already processed processing key ``key``, if any."""
        return self.jobs.find_processed(tenant, key)

    # -- job queries ----------------------------------------------------------------------------
    def job_page(
        self,
        tenant: str,
        *,
        states: Iterable[JobState] | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> JobPage:
        """The tenant's jobs newest first, ``limit`` at a time (``before``: a page's cursor)."""
        return page_jobs(self.jobs, tenant, states=states, limit=limit, before=before)

    def job_counts(self) -> JobCounts:
        """Jobs per state and slices finished, over all tenants (reads every job record)."""
        return count_jobs(self.objects, self.results_bucket)

    # -- results --------------------------------------------------------------------------------
    def stage_results(self, tenant: str, job_id: str, attempt: str | None = None) -> StagedResults:
        """A staging folder for one attempt of ``job_id``: write there, then ``publish()``."""
        return StagedResults(self.objects, self.results_bucket, tenant, job_id, attempt)

    def list_results(self, tenant: str, job_id: str) -> list[ResultObject]:
        """Published artefacts of a succeeded job (ConflictError while it is not succeeded)."""
        record = self.jobs.get(tenant, job_id)
        if record.state is not JobState.SUCCEEDED:
            raise ConflictError(f"job {job_id} is {record.state}; it has no results to list")
        prefix = keys.job_prefix(tenant, job_id)
        wanted = set(record.artefacts)
        found = []
        for item in self.objects.list(self.results_bucket, prefix):
            name = item.key[len(prefix) :]
            if name == keys.JOB_RECORD_NAME or (wanted and name not in wanted):
                continue
            found.append(ResultObject(name=name, key=item.key, size=item.size, etag=item.etag))
        return found

    def purge_results(self, tenant: str, job_id: str) -> JobRecord:
        """Delete a job's published results (never its raw inputs, never its record).

        The record keeps its state, loses its artefact list and gets ``purged_at``; the job's
        processing key is released, so the same input submitted again is processed again
        instead of being answered by a job that has no results any more.
        """
        record = self.jobs.get(tenant, job_id)
        prefix = keys.job_prefix(tenant, job_id)
        record_key = prefix + keys.JOB_RECORD_NAME
        doomed = [
            item.key
            for item in self.objects.list(self.results_bucket, prefix)
            if item.key != record_key
        ]
        self.objects.delete_many(self.results_bucket, doomed)
        if record.processing_key:
            self.jobs.release_processing_key(tenant, record.processing_key, job_id)
        purged_at = utc_now()
        return self.jobs.update(
            tenant, job_id, lambda current: replace(current, artefacts=(), purged_at=purged_at)
        )

    def get_result(self, tenant: str, job_id: str, artefact: str) -> bytes:
        """Bytes of one published artefact of a succeeded job."""
        return self.objects.get_bytes(
            self.results_bucket, self._visible_result_key(tenant, job_id, artefact)
        )

    def download_result(self, tenant: str, job_id: str, artefact: str, path: str | Path) -> Path:
        """Save one published artefact of a succeeded job to a local file (atomically)."""
        key = self._visible_result_key(tenant, job_id, artefact)
        return self.objects.download(self.results_bucket, key, path)

    def _visible_result_key(self, tenant: str, job_id: str, artefact: str) -> str:
        record = self.jobs.get(tenant, job_id)
        if record.state is not JobState.SUCCEEDED:
            raise ConflictError(f"job {job_id} is {record.state}; its results are not available")
        return keys.result_key(tenant, job_id, artefact)

    # -- presigned URLs -------------------------------------------------------------------------
    def presigned_result_url(
        self, tenant: str, job_id: str, artefact: str, expires: timedelta = timedelta(hours=1)
    ) -> str:
        """A GET URL for one published artefact of a succeeded job."""
        key = self._visible_result_key(tenant, job_id, artefact)
        return self.objects.presigned_get_url(self.results_bucket, key, _checked(expires))

    def presigned_upload_url(
        self, tenant: str, relative: str, expires: timedelta = timedelta(hours=1)
    ) -> tuple[str, str]:
        """A PUT URL for a new input at ``<tenant>/<relative>``; returns ``(key, url)``."""
        key = keys.raw_key(tenant, relative)
        return key, self.objects.presigned_put_url(self.raw_bucket, key, _checked(expires))

    def presigned_get_url(
        self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)
    ) -> str:
        """A GET URL for any key of the raw or results bucket."""
        self._known_bucket(bucket)
        return self.objects.presigned_get_url(bucket, key, _checked(expires))

    def presigned_put_url(
        self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)
    ) -> str:
        """A PUT URL for any key of the raw or results bucket."""
        self._known_bucket(bucket)
        return self.objects.presigned_put_url(bucket, key, _checked(expires))

    def _known_bucket(self, bucket: str) -> None:
        if bucket not in {self.raw_bucket, self.results_bucket}:
            raise InputError(f"bucket {bucket!r} is not one of mrdiff's buckets")


def _checked(expires: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= expires <= MAX_PRESIGN:
        raise InputError(f"presigned URL lifetime must be 1 s to 7 days, got {expires}")
    return expires
