"""``/healthz`` (the process answers) and ``/readyz`` (S3, Prefect and Ray answer too)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import ServicesDep
from services.api.readiness import Check, check_prefect, check_ray, run_check
from services.api.schemas import CheckPublic, HealthPublic, ReadyPublic

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthPublic, summary="The API process is up")
def healthz() -> HealthPublic:
    return HealthPublic()


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    summary="Object storage, Prefect and Ray are reachable",
    responses={503: {"model": ReadyPublic, "description": "A dependency does not answer"}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    def s3() -> Check:
        missing = services.storage.missing_buckets()
        if missing:
            return Check(False, f"missing bucket(s): {', '.join(missing)}")
        return Check(True, services.settings.s3_url)

    probes = {
        "s3": s3,
        "prefect": lambda: check_prefect(services.settings),
        "ray": lambda: check_ray(services.settings),
    }
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = {name: pool.submit(run_check, probe) for name, probe in probes.items()}
        checks = {name: future.result() for name, future in futures.items()}
    ready = all(check.ok for check in checks.values())
    body = ReadyPublic(
        status="ready" if ready else "not ready",
        checks={name: CheckPublic(ok=c.ok, detail=c.detail) for name, c in checks.items()},
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
