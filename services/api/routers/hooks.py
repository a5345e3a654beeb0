"""``/v1/hooks/minio``: MinIO bucket notifications (``s3:ObjectCreated:*``) start ingest jobs.

MinIO's webhook target sends ``Authorization: Bearer <auth_token>``; the token must equal
``MRDIFF_MINIO_WEBHOOK_TOKEN``. There is no default token: without that setting the hook is
disabled (404) in every environment, so no one can start work for every tenant with an
ordinary API key (and outside development the settings refuse a weak or placeholder token).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials

from pipelines.jobs import handle_minio_event
from services.api.deps import ServicesDep, bearer_scheme
from services.api.errors import responses
from services.api.schemas import HookPublic

router = APIRouter(prefix="/v1/hooks", tags=["operations"])


def require_webhook_token(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """404 when the hook is disabled, 401 unless the bearer token is the webhook token."""
    token = services.settings.minio_webhook_token
    if token is None:
        raise HTTPException(404, "the MinIO webhook is disabled (set MRDIFF_MINIO_WEBHOOK_TOKEN)")
    expected = token.get_secret_value().encode("utf-8")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode("utf-8"), expected):
        raise HTTPException(
            401, "missing or wrong webhook token", headers={"WWW-Authenticate": "Bearer"}
        )


@router.post(
    "/minio",
    response_model=HookPublic,
    dependencies=[Depends(require_webhook_token)],
    responses=responses(400, 401, 404, 413, 422, 503),
    summary="MinIO bucket notification (s3:ObjectCreated events) -> ingest jobs",
)
async def minio_event(
    payload: Annotated[dict[str, Any], Body()], services: ServicesDep
) -> HookPublic:
    records = await services.submissions.run(handle_minio_event, payload)
    return HookPublic(jobs=[record.job_id for record in records])
