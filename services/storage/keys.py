"""Key layout of the two buckets. Every object key mrdiff reads or writes is built here.

Raw bucket (``settings.raw_bucket``): inputs as scanners, PACS bridges and uploads deliver them.

    <tenant>/<study-or-upload>/<file...>     e.g. ``acme/study-17/series-3/knee.h5``
    <tenant>/<file>                          two segments: no study
    <file>                                   one segment: tenant ``default``
    <tenant>/uploads/<folder>/<file...>       files the HTTP API stored and submitted itself
    <tenant>/_quarantine/<qid>/object/<rest> inputs taken out of the inbox, see ``quarantine``
    <tenant>/_quarantine/<qid>/reason.json   why, when, the original key and its sha256

The first segment is the tenant. A second segment that starts with ``_`` (and a single-segment
key that does) is reserved for mrdiff, and segments starting with ``.`` are hidden (temporary
files of uploads in flight); neither is ever listed as a new input. ``<tenant>/uploads/`` is the
HTTP API's: every file there already has its job (with the options of its request), so the
``ingest`` poller and the MinIO webhook leave it alone (:func:`is_ingest_input`).

Results bucket (``settings.results_bucket``): everything mrdiff produces.

    <tenant>/jobs/<job_id>/job.json                 the job record, source of truth of job state
    <tenant>/jobs/<job_id>/<artefact>               published results (listed only once the
                                                    record says ``succeeded``)
    <tenant>/_staging/<job_id>/<attempt>/<artefact> results being written; published by copy
    <tenant>/index/<processing_key>.json            processing key -> job that owns it
    <tenant>/idempotency/<sha256(key)>.json         client idempotency key -> job
    <tenant>/_locks/<sha256(key)>/<stamp>-<token>   short-lived mutex candidates (see mutex.py)

Tenants and job ids are ``[A-Za-z0-9][A-Za-z0-9._-]*`` (at most 64 characters); artefact names
are relative paths of such segments.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import NamedTuple

from services.recon.errors import InputError

DEFAULT_TENANT = "default"
JOB_RECORD_NAME = "job.json"
QUARANTINE_SEGMENT = "_quarantine"
API_UPLOADS_SEGMENT = "uploads"
"""The folder below a tenant where the HTTP API stores the raw files it submits itself."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ARTEFACT_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")
_PROCESSING_KEY = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_LENGTH = 1024


class RawKey(NamedTuple):
    """A raw-bucket key split into its parts."""

    key: str
    tenant: str
    study: str | None
    name: str

    @property
    def relative(self) -> str:
        """The key below the tenant (what a quarantine copy keeps)."""
        return self.name if self.study is None else f"{self.study}/{self.name}"


def validate_name(value: str, what: str) -> str:
    """Return ``value`` if it can be one key segment (tenant, job id, ...), else InputError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InputError(
            f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)"
        )
    return value


def validate_tenant(tenant: str) -> str:
    """Return ``tenant`` or raise :class:`InputError` if it cannot be a key segment."""
    return validate_name(tenant, "tenant")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` or raise :class:`InputError`."""
    return validate_name(job_id, "job id")


def validate_processing_key(processing_key: str) -> str:
    """Return ``processing_key`` (64 lowercase hex digits) or raise :class:`InputError`."""
    if not isinstance(processing_key, str) or not _PROCESSING_KEY.fullmatch(processing_key):
        raise InputError(f"invalid processing key {processing_key!r}: expected sha256 hex")
    return processing_key


def validate_artefact_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path for a result, else raise InputError."""
    if not isinstance(name, str) or not name or len(name) > 512:
        raise InputError(f"invalid artefact name {name!r}")
    segments = name.split("/")
    if not all(_ARTEFACT_SEGMENT.fullmatch(segment) for segment in segments):
        raise InputError(
            f"invalid artefact name {name!r}: segments of A-Z a-z 0-9 . _ + = - joined by /"
        )
    if any(segment in {".", ".."} for segment in segments) or name == JOB_RECORD_NAME:
        raise InputError(f"invalid artefact name {name!r}: reserved")
    return name


def new_job_id() -> str:
    """A fresh job id that sorts by creation time: ``20250101T120000Z-1a2b3c4d5e6f``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def parse_raw_key(key: str) -> RawKey:
    """Split a raw-bucket key into tenant, study and file name (tenant ``default`` if bare)."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InputError(f"invalid raw key {key!r}")
    if key.startswith("/") or key.endswith("/") or "//" in key:
        raise InputError(f"invalid raw key {key!r}: empty path segment")
    segments = key.split("/")
    if any(segment in {".", ".."} for segment in segments):
        raise InputError(f"invalid raw key {key!r}: relative path segment")
    if len(segments) == 1:
        return RawKey(key=key, tenant=DEFAULT_TENANT, study=None, name=key)
    tenant = validate_tenant(segments[0])
    if len(segments) == 2:
        return RawKey(key=key, tenant=tenant, study=None, name=segments[1])
    return RawKey(key=key, tenant=tenant, study=segments[1], name="/".join(segments[2:]))


def raw_key(tenant: str, relative: str) -> str:
    """The raw-bucket key of ``relative`` (``study/file`` or ``file``) for ``tenant``."""
    key = f"{validate_tenant(tenant)}/{relative}"
    parsed = parse_raw_key(key)
    if is_reserved_raw_key(parsed):
        raise InputError(f"raw key {key!r} uses a reserved segment (starting with '_' or '.')")
    return key


def is_reserved_raw_key(parsed: RawKey) -> bool:
    """True for keys that are not inputs: mrdiff's own ``_`` folders and hidden ``.`` names.

    Hidden names cover temporary files that some stores show while an upload is in flight.
    """
    first_below_tenant = parsed.relative.split("/", 1)[0]
    hidden = any(segment.startswith(".") for segment in parsed.key.split("/"))
    return first_below_tenant.startswith("_") or hidden


def is_ingest_input(key: str | RawKey) -> bool:
    """True for raw keys that ``ingest`` and the MinIO webhook may start jobs for.

    False for unusable keys, mrdiff's own folders and hidden names (:func:`is_reserved_raw_key`:
    quarantine, staging, locks, uploads in flight) and the HTTP API's uploads
    (``<tenant>/uploads/...``), which were submitted when they arrived: a poll would otherwise
    make a second job for each, with the folder's default options instead of the request's.
    """
    if isinstance(key, RawKey):
        parsed = key
    else:
        try:
            parsed = parse_raw_key(key)
        except InputError:
            return False
    return not is_reserved_raw_key(parsed) and parsed.study != API_UPLOADS_SEGMENT


def quarantine_prefix(tenant: str, quarantine_id: str) -> str:
    """Folder holding one quarantined object and its reason."""
    folder = validate_name(quarantine_id, "quarantine id")
    return f"{validate_tenant(tenant)}/{QUARANTINE_SEGMENT}/{folder}/"


def tenant_prefix(tenant: str) -> str:
    """``<tenant>/``."""
    return f"{validate_tenant(tenant)}/"


def jobs_prefix(tenant: str) -> str:
    """Folder of all job folders of a tenant."""
    return f"{validate_tenant(tenant)}/jobs/"


def job_prefix(tenant: str, job_id: str) -> str:
    """Folder of one job: its record and its published results."""
    return f"{jobs_prefix(tenant)}{validate_job_id(job_id)}/"


def job_record_key(tenant: str, job_id: str) -> str:
    """Key of the job record (``job.json``)."""
    return job_prefix(tenant, job_id) + JOB_RECORD_NAME


def result_key(tenant: str, job_id: str, artefact: str) -> str:
    """Final (published) key of a result artefact."""
    return job_prefix(tenant, job_id) + validate_artefact_name(artefact)


def staging_prefix(tenant: str, job_id: str, attempt: str) -> str:
    """Folder where one attempt of a job writes results before publishing them."""
    tenant, job_id = validate_tenant(tenant), validate_job_id(job_id)
    return f"{tenant}/_staging/{job_id}/{validate_name(attempt, 'attempt')}/"


def processing_index_key(tenant: str, processing_key: str) -> str:
    """Index object mapping a processing key to the job that owns it."""
    return f"{validate_tenant(tenant)}/index/{validate_processing_key(processing_key)}.json"


def idempotency_index_key(tenant: str, idempotency_key: str) -> str:
    """Index object mapping a client idempotency key (any string) to its job."""
    if not idempotency_key or len(idempotency_key) > 256:
        raise InputError("idempotency key must be 1-256 characters")
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"{validate_tenant(tenant)}/idempotency/{digest}.json"


def lock_prefix(key: str) -> str:
    """Folder of mutex candidates guarding ``key`` (kept under the key's tenant)."""
    tenant = key.split("/", 1)[0]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{tenant}/_locks/{digest}/"
