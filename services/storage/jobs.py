"""Job records: the source of truth of a job's state, kept as ``job.json`` in the results bucket.

A record moves through ``queued -> running -> succeeded | failed | cancelled`` (a running job
may go back to ``queued`` for a retry; terminal states never change). Every stored change
raises ``version`` by one. Writers use optimistic concurrency: :meth:`JobStore.save` stores a
record only if the stored version is still the one the writer read, otherwise it raises
:class:`ConflictError`; :meth:`JobStore.update` re-reads and re-applies a change until it
lands. The compare-and-write itself runs under a :class:`~services.storage.mutex.KeyMutex`,
so two writers cannot silently clobber each other even on stores without conditional PUTs.

Two indexes point at jobs: ``<tenant>/idempotency/<sha256(key)>.json`` (a client's
idempotency key: the same key always gives the same job) and
``<tenant>/index/<processing_key>.json`` (the same input, options and model are processed
once: a new request finds the queued, running or succeeded job that owns the key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from services.recon.errors import InputError
from services.storage import keys
from services.storage.errors import (
    ConflictError,
    InvalidTransitionError,
    ObjectNotFoundError,
    StorageError,
)
from services.storage.hashing import canonical_json
from services.storage.mutex import KeyMutex
from services.storage.objects import ObjectStore

RESEARCH_USE_ONLY = "research use only, not for diagnosis"
RECORD_FORMAT = 1


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states a job never leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ALLOWED_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
# A job in one of these states owns its processing key; failed/cancelled ones give it up.
OWNING_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED})


def utc_now() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobRecord:
    """Everything known about one job; stored as JSON, changed only through :class:`JobStore`."""

    job_id: str
    tenant: str
    state: JobState
    created_at: datetime
    updated_at: datetime
    version: int = 0
    input_keys: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    content_sha256: Mapping[str, str] = field(default_factory=dict)
    model_sha256: Mapping[str, str] = field(default_factory=dict)
    processing_key: str | None = None
    idempotency_key: str | None = None
    flow_run_id: str | None = None
    progress_done: int = 0
    progress_total: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    artefacts: tuple[str, ...] = ()
    purged_at: datetime | None = None

    def with_state(self, state: JobState, **changes: Any) -> JobRecord:
        """A copy in ``state`` (with start/finish times set); InvalidTransitionError if illegal."""
        if state not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidTransitionError(
                f"job {self.job_id} cannot go from {self.state} to {state}"
            )
        now = utc_now()
        if state is JobState.RUNNING and self.started_at is None:
            changes.setdefault("started_at", now)
        if state.terminal:
            changes.setdefault("finished_at", now)
        return replace(self, state=state, **changes)

    def to_json(self) -> bytes:
        """The stored form (UTF-8 JSON, stamped research use only)."""
        document: dict[str, Any] = {
            "format": RECORD_FORMAT,
            "job_id": self.job_id,
            "tenant": self.tenant,
            "state": self.state.value,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "progress": {"done": self.progress_done, "total": self.progress_total},
            "input_keys": list(self.input_keys),
            "options": json.loads(canonical_json(self.options)),
            "content_sha256": dict(self.content_sha256),
            "model_sha256": dict(self.model_sha256),
            "processing_key": self.processing_key,
            "idempotency_key": self.idempotency_key,
            "flow_run_id": self.flow_run_id,
            "timings": dict(self.timings),
            "error": self.error,
            "artefacts": list(self.artefacts),
            "purged_at": _iso(self.purged_at),
            "research_use_only": RESEARCH_USE_ONLY,
        }
        return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        """Parse a stored record; StorageError if it is not one."""
        try:
            document = json.loads(data)
            progress = document.get("progress", {})
            return cls(
                job_id=str(document["job_id"]),
                tenant=str(document["tenant"]),
                state=JobState(document["state"]),
                version=int(document["version"]),
                created_at=datetime.fromisoformat(document["created_at"]),
                updated_at=datetime.fromisoformat(document["updated_at"]),
                started_at=_parse_time(document.get("started_at")),
                finished_at=_parse_time(document.get("finished_at")),
                progress_done=int(progress.get("done", 0)),
                progress_total=int(progress.get("total", 0)),
                input_keys=tuple(str(key) for key in document.get("input_keys", ())),
                options=dict(document.get("options") or {}),
                content_sha256=dict(document.get("content_sha256") or {}),
                model_sha256=dict(document.get("model_sha256") or {}),
                processing_key=document.get("processing_key"),
                idempotency_key=document.get("idempotency_key"),
                flow_run_id=document.get("flow_run_id"),
                timings={k: float(v) for k, v in (document.get("timings") or {}).items()},
                error=document.get("error"),
                artefacts=tuple(document.get("artefacts") or ()),
                purged_at=_parse_time(document.get("purged_at")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StorageError(f"stored job record is not valid: {error}") from error


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class CreatedJob(NamedTuple):
    """Result of :meth:`JobStore.create`: the job, and whether this call created it."""

    record: JobRecord
    created: bool


class JobStore:
    """Create, read and change job records in the results bucket."""

    def __init__(self, store: ObjectStore, bucket: str, mutex: KeyMutex | None = None) -> None:
        self.store = store
        self.bucket = bucket
        self.mutex = mutex or KeyMutex(store, bucket)

    # -- reading ------------------------------------------------------------------------------
    def find(self, tenant: str, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or None."""
        data = self.store.find_bytes(self.bucket, keys.job_record_key(tenant, job_id))
        return None if data is None else JobRecord.from_json(data)

    def get(self, tenant: str, job_id: str) -> JobRecord:
        """The record of ``job_id``; ObjectNotFoundError if there is none."""
        record = self.find(tenant, job_id)
        if record is None:
            raise ObjectNotFoundError(self.bucket, keys.job_record_key(tenant, job_id))
        return record

    def list(self, tenant: str, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        """The tenant's jobs, newest first, optionally only those in ``states``."""
        wanted = None if states is None else frozenset(states)
        records = []
        for item in self.store.list(self.bucket, keys.jobs_prefix(tenant)):
            if not item.key.endswith("/" + keys.JOB_RECORD_NAME):
                continue
            if item.key.count("/") != 3:  # <tenant>/jobs/<job_id>/job.json only
                continue
            data = self.store.find_bytes(self.bucket, item.key)
            if data is None:
                continue
            record = JobRecord.from_json(data)
            if wanted is None or record.state in wanted:
                records.append(record)
        return sorted(records, key=lambda record: (record.created_at, record.job_id), reverse=True)

    # -- creating -----------------------------------------------------------------------------
    def create(
        self,
        tenant: str,
        *,
        input_keys: Sequence[str],
        options: Mapping[str, Any] | Any = None,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        processing_key: str | None = None,
        content_sha256: Mapping[str, str] | None = None,
        model_sha256: Mapping[str, str] | None = None,
        progress_total: int = 0,
    ) -> CreatedJob:
        """Create a queued job, or return the job that already answers this request.

        With ``idempotency_key``, a second call with the same key returns the first job. With
        ``processing_key``, a queued, running or succeeded job that owns the key is returned
        instead of creating a duplicate (``created`` is False in both cases).
        """
        keys.validate_tenant(tenant)
        if idempotency_key is None:
            return self._create_for_processing_key(
                tenant,
                input_keys,
                options,
                job_id,
                None,
                processing_key,
                content_sha256,
                model_sha256,
                progress_total,
            )
        index_key = keys.idempotency_index_key(tenant, idempotency_key)
        with self.mutex.hold(index_key):
            existing = self._job_from_index(tenant, index_key)
            if existing is not None:
                return CreatedJob(existing, created=False)
            created = self._create_for_processing_key(
                tenant,
                input_keys,
                options,
                job_id,
                idempotency_key,
                processing_key,
                content_sha256,
                model_sha256,
                progress_total,
            )
            self._write_index(index_key, created.record.job_id)
            return created

    def _create_for_processing_key(
        self,
        tenant: str,
        input_keys: Sequence[str],
        options: Mapping[str, Any] | Any,
        job_id: str | None,
        idempotency_key: str | None,
        processing_key: str | None,
        content_sha256: Mapping[str, str] | None,
        model_sha256: Mapping[str, str] | None,
        progress_total: int,
    ) -> CreatedJob:
        now = utc_now()
        record = JobRecord(
            job_id=keys.validate_job_id(job_id) if job_id else keys.new_job_id(),
            tenant=tenant,
            state=JobState.QUEUED,
            created_at=now,
            updated_at=now,
            version=1,
            input_keys=tuple(input_keys),
            options=json.loads(canonical_json(options if options is not None else {})),
            content_sha256=dict(content_sha256 or {}),
            model_sha256=dict(model_sha256 or {}),
            processing_key=processing_key,
            idempotency_key=idempotency_key,
            progress_total=max(0, int(progress_total)),
        )
        if processing_key is None:
            self._insert(record)
            return CreatedJob(record, created=True)
        index_key = keys.processing_index_key(tenant, processing_key)
        with self.mutex.hold(index_key):
            owner = self._job_from_index(tenant, index_key)
            if owner is not None and owner.state in OWNING_STATES:
                return CreatedJob(owner, created=False)
            self._insert(record)
            self._write_index(index_key, record.job_id)
        return CreatedJob(record, created=True)

    def _insert(self, record: JobRecord) -> None:
        record_key = keys.job_record_key(record.tenant, record.job_id)
        with self.mutex.hold(record_key):
            if self.store.exists(self.bucket, record_key):
                raise ConflictError(f"job {record.job_id} already exists")
            self.store.put_bytes(self.bucket, record_key, record.to_json(), "application/json")

    # -- changing -----------------------------------------------------------------------------
    def save(self, record: JobRecord) -> JobRecord:
        """Store ``record`` if nobody changed the job since it was read at ``record.version``.

        Returns the stored record (``version + 1``, fresh ``updated_at``); raises
        :class:`ConflictError` when the stored version differs (re-read and try again).
        """
        record_key = keys.job_record_key(record.tenant, record.job_id)
        with self.mutex.hold(record_key):
            current = self.store.find_bytes(self.bucket, record_key)
            if current is None:
                raise ObjectNotFoundError(self.bucket, record_key)
            stored = JobRecord.from_json(current)
            if stored.version != record.version:
                raise ConflictError(
                    f"job {record.job_id} changed (version {stored.version}, "
                    f"written from {record.version})"
                )
            if stored.state is not record.state and (
                record.state not in ALLOWED_TRANSITIONS[stored.state]
            ):
                raise InvalidTransitionError(
                    f"job {record.job_id} cannot go from {stored.state} to {record.state}"
                )
            new = replace(record, version=stored.version + 1, updated_at=utc_now())
            self.store.put_bytes(self.bucket, record_key, new.to_json(), "application/json")
            return new

    def update(
        self,
        tenant: str,
        job_id: str,
        change: Callable[[JobRecord], JobRecord],
        attempts: int = 20,
    ) -> JobRecord:
        """Apply ``change`` to the current record and save it, re-reading on conflicts.

        ``change`` may run more than once, always on the latest record; it must be a pure
        function of the record it gets, and may return the very record it got to change
        nothing. Invalid transitions are not retried.
        """
        for attempt in range(max(1, attempts)):
            current = self.get(tenant, job_id)
            changed = change(current)
            if changed is current:  # nothing to change
                return current
            try:
                return self.save(changed)
            except InvalidTransitionError:
                raise
            except ConflictError:
                if attempt == attempts - 1:
                    raise
        raise ConflictError(f"job {job_id} kept changing")  # pragma: no cover

    def start(
        self, tenant: str, job_id: str, *, flow_run_id: str | None = None, total: int | None = None
    ) -> JobRecord:
        """queued -> running (records the Prefect flow-run id and the number of slices)."""

        def change(record: JobRecord) -> JobRecord:
            extra: dict[str, Any] = {"error": None}
            if flow_run_id is not None:
                extra["flow_run_id"] = flow_run_id
            if total is not None:
                extra["progress_total"], extra["progress_done"] = int(total), 0
            return record.with_state(JobState.RUNNING, **extra)

        return self.update(tenant, job_id, change)

    def set_progress(
        self, tenant: str, job_id: str, done: int, total: int | None = None
    ) -> JobRecord:
        """Record ``done`` of ``total`` slices; progress never goes backwards."""
        if done < 0 or (total is not None and (total < 0 or done > total)):
            raise InputError(f"invalid progress {done}/{total}")

        def change(record: JobRecord) -> JobRecord:
            if record.state is not JobState.RUNNING:
                raise InvalidTransitionError(
                    f"job {job_id} is {record.state}; progress is only recorded while running"
                )
            new_total = record.progress_total if total is None else total
            return replace(
                record, progress_done=max(record.progress_done, done), progress_total=new_total
            )

        return self.update(tenant, job_id, change)

    def succeed(
        self,
        tenant: str,
        job_id: str,
        *,
        artefacts: Sequence[str] = (),
        timings: Mapping[str, float] | None = None,
    ) -> JobRecord:
        """running -> succeeded, with the published artefacts; its results become listable."""

        def change(record: JobRecord) -> JobRecord:
            return record.with_state(
                JobState.SUCCEEDED,
                artefacts=tuple(artefacts),
                timings={**record.timings, **dict(timings or {})},
                progress_done=record.progress_total,
                error=None,
            )

        return self.update(tenant, job_id, change)

    def fail(
        self, tenant: str, job_id: str, error: str, timings: Mapping[str, float] | None = None
    ) -> JobRecord:
        """-> failed, with a one-line error message."""
        message = " ".join(str(error).split())[:2000] or "failed"

        def change(record: JobRecord) -> JobRecord:
            return record.with_state(
                JobState.FAILED, error=message, timings={**record.timings, **dict(timings or {})}
            )

        return self.update(tenant, job_id, change)

    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        """-> cancelled (a no-op for a job that is already cancelled)."""

        def change(record: JobRecord) -> JobRecord:
            if record.state is JobState.CANCELLED:
                return record
            return record.with_state(JobState.CANCELLED)

        return self.update(tenant, job_id, change)

    def requeue(self, tenant: str, job_id: str, reason: str | None = None) -> JobRecord:
        """running -> queued, for a retry after a transient failure."""
        return self.update(
            tenant, job_id, lambda record: record.with_state(JobState.QUEUED, error=reason)
        )

    # -- processing keys ------------------------------------------------------------------------
    def find_by_processing_key(self, tenant: str, processing_key: str) -> JobRecord | None:
        """The queued, running or succeeded job that owns ``processing_key``, if any."""
        owner = self._job_from_index(tenant, keys.processing_index_key(tenant, processing_key))
        return owner if owner is not None and owner.state in OWNING_STATES else None

    def find_processed(self, tenant: str, processing_key: str) -> JobRecord | None:
        """The succeeded job that already processed ``processing_key``, if any."""
        owner = self.find_by_processing_key(tenant, processing_key)
        return owner if owner is not None and owner.state is JobState.SUCCEEDED else None

    def claim_processing_key(self, tenant: str, job_id: str, processing_key: str) -> JobRecord:
        """Make ``job_id`` the owner of ``processing_key`` unless another live job owns it.

        Returns the owner's record: ``job_id``'s own (now carrying the key) or the other
        job's, in which case the caller should not process the input again.
        """
        index_key = keys.processing_index_key(tenant, processing_key)
        with self.mutex.hold(index_key):
            owner = self._job_from_index(tenant, index_key)
            if owner is not None and owner.job_id != job_id and owner.state in OWNING_STATES:
                return owner
            record = self.update(
                tenant, job_id, lambda r: replace(r, processing_key=processing_key)
            )
            self._write_index(index_key, job_id)
            return record

    def release_processing_key(self, tenant: str, processing_key: str, job_id: str) -> bool:
        """Drop the index entry of ``processing_key`` if ``job_id`` owns it (after a purge, so
        the same input is processed again); True when it was dropped."""
        index_key = keys.processing_index_key(tenant, processing_key)
        with self.mutex.hold(index_key):
            data = self.store.find_bytes(self.bucket, index_key)
            if data is None or _index_job_id(index_key, data) != job_id:
                return False
            self.store.delete(self.bucket, index_key)
            return True

    # -- index objects ------------------------------------------------------------------------
    def _write_index(self, index_key: str, job_id: str) -> None:
        document = {"job_id": job_id, "written_at": utc_now().isoformat()}
        self.store.put_bytes(
            self.bucket, index_key, json.dumps(document).encode(), "application/json"
        )

    def _job_from_index(self, tenant: str, index_key: str) -> JobRecord | None:
        data = self.store.find_bytes(self.bucket, index_key)
        if data is None:
            return None
        return self.find(tenant, _index_job_id(index_key, data))


def _index_job_id(index_key: str, data: bytes) -> str:
    """The job id an index object points at; StorageError if it is not an index object."""
    try:
        return str(json.loads(data)["job_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise StorageError(f"index object {index_key} is not valid: {error}") from error
