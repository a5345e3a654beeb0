"""``/v1/uploads``: presigned PUT URLs, so raw files of any size go straight to object storage.

The URL lets its holder PUT one object at ``<tenant>/uploads/<study>/<filename>`` in the raw
bucket until it expires; then ``POST /v1/jobs`` with ``{"input_keys": [key]}`` starts the job.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.api.deps import ServicesDep, TenantDep
from services.api.errors import responses
from services.api.schemas import UploadCreate, UploadPublic
from services.api.submissions import UPLOAD_FOLDER

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "",
    status_code=201,
    response_model=UploadPublic,
    responses=responses(400, 401, 413, 415, 422),
    summary="A presigned URL to PUT one raw file into your tenant's raw folder",
)
async def create_upload(
    body: UploadCreate, services: ServicesDep, tenant: TenantDep
) -> UploadPublic:
    lifetime = timedelta(seconds=services.settings.presign_seconds)
    study = body.study or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
    relative = f"{UPLOAD_FOLDER}/{study}/{body.filename}"
    key, url = await run_in_threadpool(
        services.storage.presigned_upload_url, tenant, relative, lifetime
    )
    return UploadPublic(key=key, url=url, expires_at=datetime.now(UTC) + lifetime)
