"""MinIO bucket notifications (webhook target) -> jobs, the push path beside polling.

MinIO posts an event document for every object created in a bucket with a webhook target
(``mc event add ALIAS/mrdiff-raw arn:minio:sqs::mrdiff:webhook --event put``)::

    {"EventName": "s3:ObjectCreated:Put", "Key": "mrdiff-raw/acme/study-1/knee.h5",
     "Records": [{"eventName": "s3:ObjectCreated:Put",
                  "s3": {"bucket": {"name": "mrdiff-raw"},
                         "object": {"key": "acme%2Fstudy-1%2Fknee.h5", "size": 1234,
                                    "eTag": "..."}}}]}

Object keys in records are URL-encoded (``+`` for spaces). A k-space or NIfTI file is complete
when its PUT event arrives, so it becomes a job at once (with the ``job.json`` of its folder if
there is one: upload that first). DICOM instances arrive one event each; the hook cannot know
when a series is complete, so it schedules an ``ingest`` run for the tenant after the quiet
period, which groups the series and starts its job. Events for other buckets, other event types
and mrdiff's own reserved keys are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from pipelines.config import PipelineConfig
from pipelines.inputs import OPTIONS_FILE, InputKind, kind_of
from pipelines.jobs import read_options_file, submit_job
from pipelines.options import JobOptions
from pipelines.prefect_api import INGEST_DEPLOYMENT, start_deployment_run
from services.recon.errors import InputError
from services.settings import Settings, get_settings
from services.storage import keys
from services.storage.jobs import JobRecord
from services.storage.storage import Storage

CREATED_EVENT_PREFIX = "s3:ObjectCreated:"


def created_keys(payload: Any, bucket: str) -> list[str]:
    """Raw keys of ``s3:ObjectCreated:*`` records for ``bucket`` (decoded, unique, in order).

    Raises :class:`InputError` when ``payload`` is not a MinIO/S3 event document.
    """
    if not isinstance(payload, dict):
        raise InputError("event payload must be a JSON object")
    records = payload.get("Records")
    if records is None:
        return []  # e.g. a test event without records
    if not isinstance(records, list):
        raise InputError("event payload: Records must be a list")
    found: list[str] = []
    for index, record in enumerate(records):
        try:
            name = str(record["eventName"])
            s3 = record["s3"]
            record_bucket = str(s3["bucket"]["name"])
            key = unquote_plus(str(s3["object"]["key"]))
        except (KeyError, TypeError):
            raise InputError(
                f"event payload: record {index} lacks eventName, s3.bucket or s3.object"
            ) from None
        if not name.startswith(CREATED_EVENT_PREFIX) or record_bucket != bucket:
            continue
        if key not in found:
            found.append(key)
    return found


def handle_minio_event(
    payload: dict[str, Any],
    *,
    storage: Storage | None = None,
    settings: Settings | None = None,
) -> list[JobRecord]:
    """Start jobs for the objects a MinIO notification reports; returns their records.

    One job per k-space/NIfTI object (an existing job when the same content, options and model
    were processed already); DICOM instances schedule an ``ingest`` run instead (returned list
    has no record for them). Raises :class:`InputError` for a malformed payload or options.
    """
    settings = settings or get_settings()
    storage = storage or Storage.from_settings(settings)
    config = PipelineConfig.from_settings(settings)
    records: list[JobRecord] = []
    dicom_tenants: set[str] = set()
    for key in created_keys(payload, storage.raw_bucket):
        try:
            parsed = keys.parse_raw_key(key)
        except InputError:
            continue
        if not keys.is_ingest_input(parsed):
            continue  # mrdiff's own keys; API uploads were submitted when they arrived
        kind = kind_of(parsed.name)
        if kind is InputKind.DICOM:
            dicom_tenants.add(parsed.tenant)
        elif kind in (InputKind.HDF5, InputKind.NIFTI):
            options = _folder_options(storage, key, config.default_options)
            records.append(submit_job(storage, parsed.tenant, [key], options, settings=settings))
    for tenant in sorted(dicom_tenants):
        start_deployment_run(
            settings,
            INGEST_DEPLOYMENT,
            {"tenant": tenant},
            scheduled_time=datetime.now(UTC) + timedelta(seconds=config.ingest_quiet_seconds + 1.0),
            tags=[f"tenant:{tenant}", "webhook"],
        )
    return records


def _folder_options(storage: Storage, key: str, defaults: JobOptions) -> JobOptions:
    """The ``job.json`` beside ``key`` over the defaults (the defaults when there is none)."""
    folder = key.rsplit("/", 1)[0] if "/" in key else ""
    options_key = f"{folder}/{OPTIONS_FILE}" if folder else OPTIONS_FILE
    if storage.raw_info(options_key) is None:
        return defaults
    return read_options_file(storage, options_key, defaults)
