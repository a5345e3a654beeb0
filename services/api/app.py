"""The FastAPI application: ``create_app()`` builds it from the one settings object.

Run it with ``python -m services.api`` (host and port from ``MRDIFF_API_HOST``/``MRDIFF_API_PORT``,
127.0.0.1:8000 by default) or ``uvicorn --factory services.api.app:create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from services.api.auth import ApiKeyStore
from services.api.concurrency import SubmissionGate, preload_heavy_modules
from services.api.deps import ApiServices
from services.api.errors import ErrorPublic, install_error_handlers
from services.api.limits import BodySizeLimit
from services.api.metrics import ApiMetrics, MetricsMiddleware
from services.api.model_catalog import ModelCatalog
from services.api.result_files import ResultCache
from services.api.routers import health, hooks, jobs, metrics, models, results, uploads, viewer
from services.api.routers.viewer import STATIC_DIR
from services.api.schemas import JobCreate
from services.recon.io.notice import RESEARCH_USE_ONLY
from services.settings import Settings, get_settings
from services.storage import Storage

log = logging.getLogger("mrdiff.api")

DESCRIPTION = f"""
Reconstructions, uncertainty maps and anomaly maps of MRI studies, as jobs.

Authenticate with `Authorization: Bearer <API key>` (keys come from
`mrdiff api-key create --tenant NAME`). Submit with `POST /v1/jobs`, poll `GET /v1/jobs/{{id}}`,
fetch `GET /v1/jobs/{{id}}/results`. **{RESEARCH_USE_ONLY.capitalize()}.**
"""


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment) over ``storage`` (default: the
    settings' S3). Every limit, origin and secret comes from ``settings``."""
    settings = settings or get_settings()
    storage = storage or Storage.from_settings(settings)
    services = ApiServices(
        settings=settings,
        storage=storage,
        keys=ApiKeyStore(settings.api_keys_path, settings.api_pepper.get_secret_value()),
        metrics=ApiMetrics(read_counts=storage.job_counts),
        models=ModelCatalog(settings),
        results=ResultCache(storage, settings.api_cache_dir),
        submissions=SubmissionGate(settings.max_concurrent_submissions),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        services.submissions.open()
        seconds = await run_in_threadpool(preload_heavy_modules)
        log.info(
            "Prefect client loaded in %.1f s; up to %d submissions at once",
            seconds,
            settings.max_concurrent_submissions,
        )
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="mrdiff",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Submit studies and follow their jobs."},
            {"name": "results", "description": "Reconstruction, uncertainty and anomaly maps."},
            {"name": "uploads", "description": "Presigned URLs for large raw files."},
            {"name": "models", "description": "Model weights and their versions."},
            {"name": "operations", "description": "Health, readiness, metrics."},
        ],
    )
    app.state.services = services
    install_error_handlers(app)
    for router in (
        health.router,
        metrics.router,
        jobs.router,
        results.router,
        uploads.router,
        models.router,
        hooks.router,
        viewer.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def body_limit(scope: Scope) -> int:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        if scope.get("path") == "/v1/jobs" and content_type.startswith(b"multipart/form-data"):
            return settings.max_upload_bytes
        return settings.max_json_bytes

    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location"],
        )
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    log.info(
        "mrdiff API over %s (raw %s, results %s); %s",
        settings.s3_url,
        storage.raw_bucket,
        storage.results_bucket,
        RESEARCH_USE_ONLY,
    )
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the JSON body of ``POST /v1/jobs``, which is parsed by hand
    (the route takes JSON or multipart), so its schema is added to the components here."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    job_create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(job_create.pop("$defs", {}))
    components["JobCreate"] = job_create
    components["ErrorPublic"] = ErrorPublic.model_json_schema()
    # Validation errors are answered as {"detail": "<one line>"} too (see errors.py).
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None:
                answer["content"] = {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
