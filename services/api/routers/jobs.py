"""``/v1/jobs``: submit a study (upload or raw keys), follow it, list, cancel or purge it.

A tenant only ever sees its own jobs: any other id, including another tenant's, is 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipelines.jobs import cancel_job
from pipelines.options import JobOptions
from services.api.deps import ServicesDep, StorageDep, TenantDep
from services.api.errors import describe_validation_error, responses
from services.api.job_views import job_public
from services.api.schemas import JobCreate, JobListPublic, JobPublic, JobStateName
from services.api.submissions import submit_raw_keys, submit_upload
from services.api.upload_files import check_part_content_type
from services.storage import Storage
from services.storage.jobs import JobRecord, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="Job id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=256,
        description="Retrying with the same key returns the same job.",
    ),
]

JOB_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "fastMRI HDF5, ISMRMRD HDF5, a DICOM file, a zip of "
                            "a DICOM series, or NIfTI.",
                        },
                        "options": {
                            "type": "string",
                            "description": "JSON object of JobOptions (optional).",
                        },
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        },
    }
}


def find_job(storage: Storage, tenant: str, job_id: str) -> JobRecord:
    """The tenant's job, or 404 (also for another tenant's job: existence is never leaked)."""
    record = storage.jobs.find(tenant, job_id)
    if record is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return record


def parse_options(text: str | None) -> JobOptions:
    """The ``options`` form field (JSON) as :class:`JobOptions`; 422 naming the problem."""
    return JobOptions() if text is None or not text.strip() else JobOptions.parse(text, "options")


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a study: upload a file (multipart) or name raw keys (JSON)",
    responses={
        202: {
            "description": "Accepted; the Location header points at the job",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra=JOB_CREATE_BODY,
)
async def create_job(
    request: Request,
    response: Response,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json":
        record = await _submit_json(request, services, tenant, idempotency_key)
    elif content_type == "multipart/form-data":
        record = await _submit_multipart(request, services, tenant, idempotency_key)
    else:
        raise HTTPException(
            415,
            f"unsupported content type {content_type or 'none'!r}; send multipart/form-data "
            "with a 'file' field, or application/json naming raw keys",
        )
    response.headers["Location"] = f"/v1/jobs/{record.job_id}"
    return job_public(record)


async def _submit_json(
    request: Request, services: ServicesDep, tenant: str, idempotency_key: str | None
) -> JobRecord:
    try:
        body = JobCreate.model_validate_json(await request.body())
    except ValidationError as error:
        raise HTTPException(422, describe_validation_error(list(error.errors()))) from None
    return await services.submissions.run(
        submit_raw_keys,
        services.settings,
        services.storage,
        tenant,
        body.input_keys,
        body.options,
        idempotency_key,
    )


async def _submit_multipart(
    request: Request, services: ServicesDep, tenant: str, idempotency_key: str | None
) -> JobRecord:
    async with request.form(max_files=1, max_fields=4) as form:
        unknown = sorted(set(form.keys()) - {"file", "options"})
        if unknown:
            raise HTTPException(422, f"unknown multipart field(s): {', '.join(unknown)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "multipart field 'file' is missing (or is not a file)")
        options_field = form.get("options")
        if options_field is not None and not isinstance(options_field, str):
            raise HTTPException(422, "multipart field 'options' must be JSON text, not a file")
        options = parse_options(options_field)
        check_part_content_type(upload.content_type)
        return await services.submissions.run(
            submit_upload,
            services.settings,
            services.storage,
            tenant,
            upload.file,
            upload.filename,
            options,
            idempotency_key,
        )


@router.get(
    "",
    response_model=JobListPublic,
    responses=responses(401, 422),
    summary="Your jobs, newest first, optionally filtered by state",
)
async def list_jobs(
    storage: StorageDep,
    tenant: TenantDep,
    state: Annotated[JobStateName | None, Query(description="Only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=JOB_ID_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> JobListPublic:
    states = None if state is None else [JobState(state)]
    page = await run_in_threadpool(
        storage.job_page, tenant, states=states, limit=limit, before=cursor
    )
    return JobListPublic(items=[job_public(r) for r in page.records], next_cursor=page.next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses=responses(401, 404, 422),
    summary="State, progress per slice, timings and error of one job",
)
async def get_job(job_id: JobId, storage: StorageDep, tenant: TenantDep) -> JobPublic:
    return job_public(await run_in_threadpool(find_job, storage, tenant, job_id))


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses=responses(401, 404, 409, 422),
    summary="Cancel a queued or running job; with purge=true also remove its results",
)
async def delete_job(
    job_id: JobId,
    services: ServicesDep,
    tenant: TenantDep,
    purge: Annotated[
        bool, Query(description="Also delete the job's results (never inputs)")
    ] = False,
) -> JobPublic:
    def cancel_and_purge() -> JobRecord:
        storage = services.storage
        record = find_job(storage, tenant, job_id)
        if not record.state.terminal:
            record = cancel_job(storage, tenant, job_id)
        elif record.state is JobState.SUCCEEDED and not purge:
            raise HTTPException(
                409,
                f"job {job_id} already succeeded; nothing to cancel (pass purge=true to "
                "remove its results)",
            )
        if purge:
            record = storage.purge_results(tenant, job_id)
            services.results.forget(tenant, job_id)
        return record

    return job_public(await run_in_threadpool(cancel_and_purge))
