"""``/v1/jobs/{id}/results``: what a succeeded job produced, and each result in the format asked.

Besides the files the pipeline published (HDF5, NIfTI, PNG previews, report.json, ...), every
image volume in the job's HDF5 (``reconstruction``, ``variance``, ``anomaly_map``, ...) is
offered as ``<name>.png`` (one slice, ``?slice=&window=&level=``), ``<name>.npy`` and
``<name>.nii.gz``. Every PNG carries the footer "research use only, not for diagnosis".
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from services.api.deps import ServicesDep, TenantDep
from services.api.errors import responses
from services.api.result_files import ResultCache, VolumeInfo
from services.api.routers.jobs import JobId, find_job
from services.api.schemas import ResultListPublic, ResultPublic
from services.recon.io import png_bytes, write_nifti
from services.recon.io.notice import RESEARCH_USE_ONLY
from services.storage.jobs import JobRecord, JobState
from services.storage.results import content_type_for

router = APIRouter(prefix="/v1/jobs/{job_id}/results", tags=["results"])

DERIVED_FORMATS = {
    "png": "image/png",
    "npy": "application/x-npy",
    "nii.gz": "application/gzip",
}
COLORMAPS = {"anomaly_map": "hot", "anomaly_mask": "hot"}
DESCRIPTIONS = {
    "reconstruction": "Reconstructed magnitude image",
    "variance": "Pixel variance across diffusion samples (uncertainty)",
    "anomaly_map": "Anomaly map |input - healthy| (classifier-guided)",
    "healthy": "Healthy-looking counterfactual of the input",
    "anomaly_mask": "Thresholded anomaly map",
}
IMMUTABLE = {"Cache-Control": "private, max-age=3600", "X-Research-Use-Only": RESEARCH_USE_ONLY}
ResultName = Annotated[
    str,
    PathParam(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}){0,7}$",
        description="A name from the job's result list",
    ),
]


def succeeded_job(services: ServicesDep, tenant: str, job_id: str) -> JobRecord:
    """The tenant's job if it succeeded; 404 if unknown, 409 while it has no results."""
    record = find_job(services.storage, tenant, job_id)
    if record.state is not JobState.SUCCEEDED:
        raise HTTPException(
            409, f"job {job_id} is {record.state.value}; results appear when it succeeds"
        )
    return record


def published_artefacts(services: ServicesDep, record: JobRecord) -> list[str]:
    """Names of the job's published results (none after a purge)."""
    return [item.name for item in services.storage.list_results(record.tenant, record.job_id)]


def split_derived(name: str) -> tuple[str, str] | None:
    """``reconstruction.nii.gz`` -> (``reconstruction``, ``nii.gz``)."""
    for suffix in DERIVED_FORMATS:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    return None


@router.get(
    "",
    response_model=ResultListPublic,
    responses=responses(401, 404, 409, 422),
    summary="Results of a succeeded job: name, URL and media type of each",
)
async def list_results(job_id: JobId, services: ServicesDep, tenant: TenantDep) -> ResultListPublic:
    def listing() -> ResultListPublic:
        record = succeeded_job(services, tenant, job_id)
        artefacts = published_artefacts(services, record)
        volumes = services.results.volumes(tenant, job_id, artefacts)
        base = f"/v1/jobs/{job_id}/results"
        items: list[ResultPublic] = []
        for dataset, info in volumes.items():
            for suffix, media_type in DERIVED_FORMATS.items():
                name = f"{dataset}.{suffix}"
                if name in artefacts:
                    continue
                items.append(
                    ResultPublic(
                        name=name,
                        url=f"{base}/{name}",
                        media_type=media_type,
                        description=DESCRIPTIONS.get(dataset),
                        slices=info.shape[0],
                        value_min=info.value_min,
                        value_max=info.value_max,
                        window=info.window if suffix == "png" else None,
                        level=info.level if suffix == "png" else None,
                    )
                )
        items.extend(
            ResultPublic(name=name, url=f"{base}/{name}", media_type=content_type_for(name))
            for name in artefacts
        )
        return ResultListPublic(job_id=job_id, items=items)

    return await run_in_threadpool(listing)


@router.get(
    "/{name:path}",
    responses={
        200: {
            "content": {"image/png": {}, "application/octet-stream": {}},
            "description": "The result's bytes",
        },
        **responses(401, 404, 409, 422),
    },
    response_class=Response,
    summary="One result: a published file, or an image volume as PNG (per slice), NPY or NIfTI",
)
async def get_result(
    job_id: JobId,
    name: ResultName,
    services: ServicesDep,
    tenant: TenantDep,
    slice_index: Annotated[
        int, Query(alias="slice", ge=0, le=100_000, description="Slice of a PNG result")
    ] = 0,
    window: Annotated[float | None, Query(gt=0, le=1e12, description="PNG window width")] = None,
    level: Annotated[
        float | None, Query(ge=-1e12, le=1e12, description="PNG window centre")
    ] = None,
) -> Response:
    def serve() -> Response:
        record = succeeded_job(services, tenant, job_id)
        artefacts = published_artefacts(services, record)
        if name in artefacts:
            path = services.results.artefact(tenant, job_id, name)
            return FileResponse(
                path, media_type=content_type_for(name), headers=IMMUTABLE, filename=Path(name).name
            )
        derived = split_derived(name)
        volumes = services.results.volumes(tenant, job_id, artefacts) if derived else {}
        if derived is None or derived[0] not in volumes:
            raise HTTPException(404, f"job {job_id} has no result {name!r}")
        dataset, suffix = derived
        info = volumes[dataset]
        if suffix == "png":
            return _png(info, slice_index, window, level)
        volume = services.results.read_volume(info)
        if suffix == "npy":
            buffer = io.BytesIO()
            np.save(buffer, volume, allow_pickle=False)
            return Response(
                buffer.getvalue(),
                media_type=DERIVED_FORMATS[suffix],
                headers={**IMMUTABLE, "Content-Disposition": f'attachment; filename="{name}"'},
            )
        return _nifti(volume, info, name)

    return await run_in_threadpool(serve)


def _png(info: VolumeInfo, slice_index: int, window: float | None, level: float | None) -> Response:
    slices = info.shape[0]
    if slice_index >= slices:
        raise HTTPException(
            422,
            f"slice {slice_index} is out of range: this result has "
            f"{slices} slice(s), 0..{slices - 1}",
        )
    width = window if window is not None else info.window
    centre = level if level is not None else info.level
    image = ResultCache.read_slice(info, slice_index)
    data = png_bytes(
        image, window=(centre - width / 2, centre + width / 2), colormap=COLORMAPS.get(info.dataset)
    )
    return Response(data, media_type="image/png", headers=IMMUTABLE)


def _nifti(volume: np.ndarray, info: VolumeInfo, name: str) -> Response:
    with tempfile.TemporaryDirectory() as folder:
        path = write_nifti(
            Path(folder) / "result.nii.gz", volume, info.pixel_spacing_mm, info.slice_thickness_mm
        )
        data = path.read_bytes()
    return Response(
        data,
        media_type="application/gzip",
        headers={**IMMUTABLE, "Content-Disposition": f'attachment; filename="{name}"'},
    )
