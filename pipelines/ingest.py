"""The ``ingest`` flow: find what arrived in the raw bucket and start one job per study.

Runs on a schedule (S3 servers without notifications, like nanio, are polled) and on demand
(the MinIO webhook). Each run:

1. lists the inbox and groups it into units (:mod:`pipelines.inputs`); folders that changed
   within the quiet period wait for the next run, so a DICOM series is complete first;
2. quarantines objects it cannot use, with the reason (unsupported type, not DICOM, a
   ``job.json`` that is not valid options) and carries on with the rest;
3. splits DICOM units into series (one job per SeriesInstanceUID);
4. hashes contents (cached by object ETag, so an object is read once however often it is
   polled) and creates jobs through :func:`pipelines.jobs.create_job`: the same content with
   the same options and model finds its existing job and is never processed twice;
5. starts a ``process-job`` run per new job (or runs it here with ``inline=True``), optionally
   waits for them, and publishes a table of what it did.

So that a poll does not re-examine every study ever received, a run that left nothing waiting
stores its start time in the Prefect variable ``mrdiff-ingest-<tenant>``; the next run looks
only at folders changed since then (less a safety overlap). ``full=True`` ignores it; losing
it only costs one full pass, since work is deduplicated by processing key anyway.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydicom.errors import InvalidDicomError

from pipelines.artifacts import artifact_key, publish_ingest_table
from pipelines.config import PipelineConfig
from pipelines.inputs import InputKind, StudyUnit, folder_of, group_inbox
from pipelines.jobs import create_job, read_options_file, start_job_run
from pipelines.options import JobOptions
from pipelines.prefect_api import INGEST_FLOW, PipelineUnavailableError
from services.recon.errors import InputError
from services.settings import Settings, get_settings
from services.storage.errors import ObjectNotFoundError
from services.storage.inbox import RawObject
from services.storage.storage import Storage

SUPPORTED = "fastMRI/ISMRMRD HDF5 (.h5), DICOM (.dcm or no extension), NIfTI (.nii, .nii.gz)"
WATERMARK_OVERLAP = timedelta(minutes=5)


class IngestRow(NamedTuple):
    """One line of the ingest table: a study and what happened to it."""

    tenant: str
    study: str
    kind: str
    files: int
    action: str
    job_id: str | None = None
    state: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def _identity(keys_and_etags: Sequence[tuple[str, str]], salt: str) -> str:
    text = salt + "\n" + "\n".join(f"{key}\t{etag}" for key, etag in sorted(keys_and_etags))
    return hashlib.sha256(text.encode()).hexdigest()


def _by_identity(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return str(parameters["identity"])


# -- tasks --------------------------------------------------------------------------------------
@task(
    name="content-sha256",
    cache_key_fn=_by_identity,
    persist_result=True,
    retries=3,
    retry_delay_seconds=[1, 4, 10],
)
def content_digests(storage: Storage, keys: tuple[str, ...], identity: str) -> dict[str, str]:
    """sha256 of each object's content (cached by the objects' keys and ETags)."""
    return {key: storage.raw_sha256(key) for key in keys}


class SeriesSplit(NamedTuple):
    """DICOM files grouped by SeriesInstanceUID, and files that are not usable DICOM."""

    series: list[tuple[str, ...]]
    rejected: list[tuple[str, str]]


@task(
    name="split-dicom-series",
    cache_key_fn=_by_identity,
    persist_result=True,
    retries=3,
    retry_delay_seconds=[1, 4, 10],
)
def split_dicom_series(storage: Storage, keys: tuple[str, ...], identity: str) -> SeriesSplit:
    """Read DICOM headers (no pixels) and group files by series (cached by keys and ETags)."""
    groups: dict[str, list[str]] = {}
    rejected: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mrdiff-ingest-") as work:
        for index, key in enumerate(keys):
            path = storage.download_raw(key, Path(work) / f"{index:05d}.dcm")
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError) as error:
                rejected.append((key, f"not a readable DICOM file ({type(error).__name__})"))
                continue
            uid = getattr(header, "SeriesInstanceUID", None)
            if not uid:
                rejected.append((key, "DICOM file without SeriesInstanceUID"))
                continue
            groups.setdefault(str(uid), []).append(key)
    return SeriesSplit([tuple(sorted(v)) for _, v in sorted(groups.items())], rejected)


@task(name="read-job-options", retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE)
def read_job_options(storage: Storage, options_key: str | None, defaults: JobOptions) -> JobOptions:
    """Options of a study folder: its ``job.json`` over the defaults; InputError if invalid."""
    return defaults if options_key is None else read_options_file(storage, options_key, defaults)


@task(name="quarantine", retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE)
def quarantine(storage: Storage, key: str, reason: str) -> str | None:
    """Move one raw object to quarantine with ``reason`` (None if it is already gone)."""
    try:
        return storage.quarantine(key, reason).object_key
    except ObjectNotFoundError:
        return None


# -- the flow -----------------------------------------------------------------------------------
@flow(name=INGEST_FLOW, persist_result=False)
def ingest(
    tenant: str | None = None,
    quiet_seconds: float | None = None,
    wait_seconds: float = 0.0,
    inline: bool = False,
    full: bool = False,
) -> list[dict[str, Any]]:
    """Start one job per settled study in the raw bucket (see module docs); returns the table.

    ``quiet_seconds`` overrides the configured quiet period; ``wait_seconds`` waits that long
    for the started jobs to finish; ``inline`` runs each job here as a subflow instead of
    starting a ``process-job`` deployment run; ``full`` looks at every folder, not only those
    changed since the last complete run.
    """
    settings = get_settings()
    return run_ingest(
        Storage.from_settings(settings), settings, tenant, quiet_seconds, wait_seconds, inline, full
    )


def run_ingest(
    storage: Storage,
    settings: Settings,
    tenant: str | None = None,
    quiet_seconds: float | None = None,
    wait_seconds: float = 0.0,
    inline: bool = False,
    full: bool = False,
) -> list[dict[str, Any]]:
    """The body of :func:`ingest`."""
    logger = get_run_logger()
    config = PipelineConfig.from_settings(settings)
    quiet_for = config.ingest_quiet_seconds if quiet_seconds is None else quiet_seconds
    quiet = timedelta(seconds=quiet_for)
    run_started = datetime.now(UTC)
    watermark = None if full else _read_watermark(tenant)
    objects = _changed_folders(storage.list_raw(tenant), watermark)
    inbox = group_inbox(objects, run_started, quiet)
    etags = {item.key: item.etag for item in objects}
    rows: list[IngestRow] = []
    for item in inbox.unsupported:
        reason = f"unsupported file type {item.name!r}; expected {SUPPORTED}"
        quarantine(storage, item.key, reason)
        rows.append(IngestRow(item.tenant, item.key, "unsupported", 1, f"quarantined: {reason}"))
    for unit in inbox.waiting:
        rows.append(_row(unit, "waiting (quiet period)"))
    options_by_folder: dict[str, JobOptions | InputError] = {}
    started: list[tuple[str, str]] = []
    for unit in inbox.ready:
        options = _folder_options(storage, unit, config, options_by_folder)
        if isinstance(options, InputError):
            for key in unit.keys:
                quarantine(storage, key, f"invalid job.json beside it: {options}")
            rows.append(_row(unit, f"quarantined: {options}"))
            continue
        for series in _series_of(storage, unit, etags, rows):
            rows.append(_submit(storage, settings, series, options, etags, started, inline))
    problems = [row for row in rows if row.action.startswith("not submitted")]
    if inline:
        _run_inline(started)
    if wait_seconds > 0 and started:
        _wait(storage, started, wait_seconds)
    rows = _with_states(storage, rows)
    publish_ingest_table(
        [row.as_dict() for row in rows],
        f"ingest of {tenant or 'all tenants'}: {len(started)} job(s) started, "
        f"{len(inbox.waiting)} study(ies) waiting for the quiet period",
    )
    if problems:
        logger.error(
            "%d study(ies) could not be submitted: %s",
            len(problems),
            "; ".join(row.action for row in problems),
        )
    elif not inbox.waiting:
        _write_watermark(tenant, run_started)
    return [row.as_dict() for row in rows]


def _watermark_name(tenant: str | None) -> str:
    return artifact_key("mrdiff-ingest", tenant or "all-tenants")


def _read_watermark(tenant: str | None) -> datetime | None:
    """Start of the last ingest run that left nothing waiting (None: look at everything)."""
    from prefect.variables import Variable

    try:
        value = Variable.get(_watermark_name(tenant), default=None)
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except Exception as error:  # an unreadable watermark only means a full pass
        get_run_logger().warning("ignoring the ingest watermark: %s", error)
        return None


def _write_watermark(tenant: str | None, when: datetime) -> None:
    from prefect.variables import Variable

    try:
        Variable.set(
            _watermark_name(tenant), when.isoformat(), overwrite=True, tags=["mrdiff", "ingest"]
        )
    except Exception as error:
        get_run_logger().warning("could not store the ingest watermark: %s", error)


def _changed_folders(objects: list[RawObject], watermark: datetime | None) -> list[RawObject]:
    """Objects of the study folders with anything newer than ``watermark`` (less the overlap)."""
    if watermark is None:
        return objects
    horizon = watermark - WATERMARK_OVERLAP
    changed = {folder_of(item) for item in objects if item.last_modified > horizon}
    return [item for item in objects if folder_of(item) in changed]


def _folder_options(
    storage: Storage,
    unit: StudyUnit,
    config: PipelineConfig,
    cache: dict[str, JobOptions | InputError],
) -> JobOptions | InputError:
    if unit.folder not in cache:
        try:
            cache[unit.folder] = read_job_options(storage, unit.options_key, config.default_options)
        except InputError as error:
            cache[unit.folder] = error
            if unit.options_key is not None:
                quarantine(storage, unit.options_key, str(error))
        except ObjectNotFoundError:
            cache[unit.folder] = config.default_options  # job.json was removed meanwhile
    return cache[unit.folder]


def _series_of(
    storage: Storage, unit: StudyUnit, etags: dict[str, str], rows: list[IngestRow]
) -> list[StudyUnit]:
    """A unit per DICOM series (rejected files quarantined); other units unchanged."""
    if unit.kind is not InputKind.DICOM:
        return [unit]
    identity = _identity([(k, etags[k]) for k in unit.keys], "dicom-series")
    split = split_dicom_series(storage, unit.keys, identity)
    for key, reason in split.rejected:
        quarantine(storage, key, reason)
        rows.append(IngestRow(unit.tenant, key, "dicom", 1, f"quarantined: {reason}"))
    return [
        StudyUnit(unit.tenant, unit.folder, unit.kind, keys, unit.options_key)
        for keys in split.series
    ]


def _row(unit: StudyUnit, action: str, job_id: str | None = None) -> IngestRow:
    return IngestRow(unit.tenant, unit.label, unit.kind.value, len(unit.keys), action, job_id)


def _submit(
    storage: Storage,
    settings: Settings,
    unit: StudyUnit,
    options: JobOptions,
    etags: dict[str, str],
    started: list[tuple[str, str]],
    inline: bool,
) -> IngestRow:
    """Create the unit's job (or find the one that already did this work) and start it."""
    identity = _identity([(k, etags.get(k, "")) for k in unit.keys], "sha256")
    try:
        digests = content_digests(storage, unit.keys, identity)
        created = create_job(
            storage,
            unit.tenant,
            list(unit.keys),
            options,
            content_sha256=digests,
            settings=settings,
        )
    except ObjectNotFoundError as error:
        return _row(unit, f"skipped: {error}")
    except InputError as error:  # options this deployment cannot honour (e.g. missing models)
        return _row(unit, f"not submitted: {error}")
    record = created.record
    if not created.created:
        return _row(
            unit, f"already {record.state.value} (same content, options and model)", record.job_id
        )
    if not inline:
        try:
            start_job_run(storage, record, settings)
        except PipelineUnavailableError as error:
            get_run_logger().error("could not start job %s: %s", record.job_id, error)
            return _row(unit, f"not submitted: {error}", record.job_id)
    started.append((record.tenant, record.job_id))
    return _row(unit, "job created" if inline else "job started", record.job_id)


def _run_inline(started: Sequence[tuple[str, str]]) -> None:
    from pipelines.process_job import process_job

    for tenant, job_id in started:  # a failed job is in its record; the batch goes on
        process_job(tenant=tenant, job_id=job_id, return_state=True)


def _wait(storage: Storage, jobs: Sequence[tuple[str, str]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(storage.jobs.get(tenant, job_id).state.terminal for tenant, job_id in jobs):
            return
        time.sleep(1.0)


def _with_states(storage: Storage, rows: list[IngestRow]) -> list[IngestRow]:
    """Rows with the current state of their jobs."""
    updated = []
    for row in rows:
        record = storage.jobs.find(row.tenant, row.job_id) if row.job_id else None
        updated.append(row._replace(state=record.state.value) if record else row)
    return updated


__all__ = ["IngestRow", "RawObject", "ingest", "run_ingest"]
