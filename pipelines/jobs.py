"""Submitting and cancelling jobs: the one entry point the API, the webhook and ingest share.

:func:`submit_job` creates the job record (state ``queued``) in the results bucket, the source
of truth for job state, and starts a run of the Prefect deployment ``process-job/process-job``
for it, storing the flow-run id in the record. The same request made again returns the job
that already answers it instead of doing the work twice:

- the same client ``idempotency_key`` always gives the same job;
- the same inputs (by content sha256), options, model weights (by sha256) and tenant give the
  queued, running or succeeded job that owns that *processing key*; a failed or cancelled job
  gives its key up, so asking again retries.

Call these from synchronous code (in FastAPI: a ``def`` route or ``run_in_threadpool``): they
make blocking calls to S3 and to the Prefect API.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from pipelines.models import require_models
from pipelines.options import JobOptions
from pipelines.prefect_api import (
    PROCESS_JOB_DEPLOYMENT,
    PipelineUnavailableError,
    start_deployment_run,
)
from services.recon.errors import InputError
from services.settings import Settings, get_settings
from services.storage import keys
from services.storage.hashing import processing_key
from services.storage.jobs import CreatedJob, JobRecord, JobState
from services.storage.storage import Storage

__all__ = [
    "JobOptions",
    "JobRecord",
    "JobState",
    "PipelineUnavailableError",
    "cancel_job",
    "combined_content_sha256",
    "create_job",
    "handle_minio_event",
    "job_processing_key",
    "read_options_file",
    "submit_job",
]

MAX_OPTIONS_BYTES = 64 * 1024


def combined_content_sha256(digests: Mapping[str, str]) -> str:
    """One content hash for a job's inputs, independent of their names and order.

    A single input keeps its own sha256; several (a DICOM series) hash their sorted digests.
    """
    values = sorted(d.lower() for d in digests.values())
    if not values:
        raise InputError("a job needs at least one input")
    if len(values) == 1:
        return values[0]
    return hashlib.sha256("\n".join(values).encode("ascii")).hexdigest()


def job_processing_key(
    tenant: str, digests: Mapping[str, str], options: JobOptions, settings: Settings
) -> tuple[str, dict[str, str]]:
    """The processing key of inputs with these content digests and options, and the models
    (role -> sha256) it names; :class:`InputError` when a needed model is not installed."""
    models = require_models(options, settings.prior_path)
    key = processing_key(combined_content_sha256(digests), options.as_record(), models, tenant)
    return key, models


def check_input_keys(storage: Storage, tenant: str, input_keys: Sequence[str]) -> list[str]:
    """The raw keys of a job, checked: present, unique, in the inbox, owned by ``tenant``."""
    keys.validate_tenant(tenant)
    if not input_keys:
        raise InputError("a job needs at least one input key")
    if len(set(input_keys)) != len(input_keys):
        raise InputError("input keys must not repeat")
    checked = []
    for key in input_keys:
        parsed = keys.parse_raw_key(key)
        if parsed.tenant != tenant or keys.is_reserved_raw_key(parsed):
            raise InputError(f"input {key!r} is not an input of tenant {tenant!r}")
        if storage.raw_info(key) is None:
            raise InputError(f"input {key!r} is not in the raw bucket")
        checked.append(key)
    return sorted(checked)


def submit_job(
    storage: Storage,
    tenant: str,
    input_keys: list[str],
    options: JobOptions,
    idempotency_key: str | None = None,
    *,
    content_sha256: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> JobRecord:
    """Create (or find) the job for ``input_keys`` with ``options`` and start its flow run.

    ``content_sha256`` (raw key -> sha256) saves reading inputs back when the caller hashed
    them while uploading. Raises :class:`InputError` for bad keys or options (including models
    that are not installed, e.g. anomaly maps before the classifier ships) and
    :class:`PipelineUnavailableError` when Prefect cannot take the run (the new job is then
    marked failed with that reason, which frees its processing key for a retry).
    """
    settings = settings or get_settings()
    created = create_job(
        storage,
        tenant,
        input_keys,
        options,
        idempotency_key,
        content_sha256=content_sha256,
        settings=settings,
    )
    if not created.created:
        return created.record
    return start_job_run(storage, created.record, settings)


def create_job(
    storage: Storage,
    tenant: str,
    input_keys: Sequence[str],
    options: JobOptions,
    idempotency_key: str | None = None,
    *,
    content_sha256: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> CreatedJob:
    """Create the queued job record (or find the job that already answers), without a run."""
    settings = settings or get_settings()
    checked = check_input_keys(storage, tenant, input_keys)
    digests = {key: (content_sha256 or {}).get(key) or storage.raw_sha256(key) for key in checked}
    key, models = job_processing_key(tenant, digests, options, settings)
    return storage.jobs.create(
        tenant,
        input_keys=checked,
        options=options.as_record(),
        idempotency_key=idempotency_key,
        processing_key=key,
        content_sha256=digests,
        model_sha256=models,
    )


def start_job_run(storage: Storage, record: JobRecord, settings: Settings) -> JobRecord:
    """Start the ``process-job`` flow run of a queued job and store its flow-run id."""
    try:
        flow_run_id = start_deployment_run(
            settings,
            PROCESS_JOB_DEPLOYMENT,
            {"tenant": record.tenant, "job_id": record.job_id},
            idempotency_key=f"process-job/{record.tenant}/{record.job_id}",
            tags=[f"tenant:{record.tenant}"],
        )
    except PipelineUnavailableError as error:
        storage.jobs.fail(record.tenant, record.job_id, str(error))
        raise

    def remember(current: JobRecord) -> JobRecord:
        if current.flow_run_id:  # the flow run already started and wrote it itself
            return current
        return replace(current, flow_run_id=flow_run_id)

    return storage.jobs.update(record.tenant, record.job_id, remember)


def read_options_file(storage: Storage, options_key: str, defaults: JobOptions) -> JobOptions:
    """The options in a raw ``job.json`` over ``defaults``; :class:`InputError` if invalid."""
    info = storage.raw_info(options_key)
    if info is not None and info.size > MAX_OPTIONS_BYTES:
        raise InputError(f"{options_key}: larger than {MAX_OPTIONS_BYTES // 1024} KiB")
    with tempfile.TemporaryDirectory(prefix="mrdiff-options-") as work:
        text = storage.download_raw(options_key, Path(work) / "job.json").read_bytes()
    overrides = JobOptions.parse(text, options_key).model_dump(exclude_unset=True)
    return defaults.merged(overrides, options_key)


def cancel_job(storage: Storage, tenant: str, job_id: str) -> JobRecord:
    """Cancel a queued or running job; its flow stops between slices and publishes nothing.

    A job that already finished is returned unchanged (cancelling it is not an error).
    """
    record = storage.jobs.get(tenant, job_id)
    if record.state in (JobState.SUCCEEDED, JobState.FAILED):
        return record
    return storage.jobs.cancel(tenant, job_id)


def handle_minio_event(payload: dict[str, object]) -> list[JobRecord]:
    """Start jobs for objects a MinIO bucket notification reports (see :mod:`pipelines.hooks`)."""
    from pipelines.hooks import handle_minio_event as handle

    return handle(payload)
