"""Turning a request into a job: store an upload in the raw bucket, or check named raw keys.

Uploads are stored content-addressed under ``<tenant>/uploads/<sha256[:20]>/<file>`` (a zip of a
DICOM series as its instances ``00001.dcm`` ...), so a retried upload writes the same keys; the
raw inputs are never deleted by the API. The job itself is created by
:func:`pipelines.jobs.submit_job`, which triggers the Prefect deployment ``process-job``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

from pipelines.jobs import submit_job
from pipelines.options import JobOptions
from services.api.upload_files import check_upload, file_sha256, safe_filename, save_stream
from services.recon.errors import InputError
from services.settings import Settings
from services.storage import Storage
from services.storage.jobs import JobRecord

UPLOAD_FOLDER = "uploads"


def submit_upload(
    settings: Settings,
    storage: Storage,
    tenant: str,
    stream: BinaryIO,
    filename: str | None,
    options: JobOptions,
    idempotency_key: str | None,
) -> JobRecord:
    """Save, sniff, read, store and submit one uploaded file (blocking; run in a thread)."""
    work_root = settings.api_uploads_dir
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_root) as work:
        work_dir = Path(work)
        name = safe_filename(filename, "upload.bin")
        saved = work_dir / "upload.part"
        sha256, size = save_stream(stream, saved)
        limit = settings.max_upload_bytes
        if size > limit:  # the middleware stops bodies earlier; belt and braces
            raise InputError(f"upload exceeds {limit} bytes")
        checked = check_upload(saved, name, sha256, size, limit, work_dir)
        folder = f"{UPLOAD_FOLDER}/{sha256[:20]}"
        digests: dict[str, str] = {}
        for path, stored_name in checked.files:
            key = storage.put_raw(tenant, f"{folder}/{stored_name}", path=path)
            digests[key] = sha256 if len(checked.files) == 1 else file_sha256(path)
    return submit_job(
        storage,
        tenant,
        list(digests),
        options,
        idempotency_key,
        content_sha256=digests,
        settings=settings,
    )


def submit_raw_keys(
    settings: Settings,
    storage: Storage,
    tenant: str,
    input_keys: list[str],
    options: JobOptions,
    idempotency_key: str | None,
) -> JobRecord:
    """Submit objects already in the raw bucket; each must be the caller's and exist (else 422,
    with the same message whether another tenant's key exists or not)."""
    return submit_job(
        storage, tenant, list(input_keys), options, idempotency_key, settings=settings
    )
