"""``/v1/models``: the model weights jobs run with, and their versions (sha256 of the files)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.api.deps import ServicesDep, TenantDep
from services.api.errors import responses
from services.api.schemas import ModelListPublic, ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "",
    response_model=ModelListPublic,
    responses=responses(401),
    summary="Models the workers load, with sha256 versions",
)
async def list_models(services: ServicesDep, _: TenantDep) -> ModelListPublic:
    models = await run_in_threadpool(services.models.models)
    return ModelListPublic(
        items=[
            ModelPublic(name=m.name, file=m.path.name, sha256=m.sha256, size_bytes=m.size_bytes)
            for m in models
        ]
    )
