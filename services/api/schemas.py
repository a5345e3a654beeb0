"""Request (``*Create``) and response (``*Public``) bodies of the HTTP API.

Responses never expose storage internals (bucket names, processing keys, flow-run ids beyond the
Prefect link, other tenants); requests are validated here so a bad body is a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.options import JobOptions

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


# -- jobs ------------------------------------------------------------------------------------
class JobCreate(BaseModel):
    """Submit objects already in the raw bucket (under your tenant) as one job."""

    model_config = ConfigDict(extra="forbid")

    input_keys: list[str] = Field(
        min_length=1,
        max_length=5000,
        description="Raw-bucket keys, each starting with '<your tenant>/' (one file, or the "
        "instances of one DICOM series).",
    )
    options: JobOptions = Field(default_factory=JobOptions)


class ProgressPublic(BaseModel):
    """Slices finished out of slices to do (0/0 until the input has been read)."""

    done: int = Field(ge=0)
    total: int = Field(ge=0)
    fraction: float = Field(ge=0, le=1)


class JobLinks(BaseModel):
    """Where to go next."""

    self: str
    results: str
    viewer: str


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    state: JobStateName
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: ProgressPublic
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds per phase, as recorded by the pipeline."
    )
    error: str | None = Field(default=None, description="Why the job failed, in one line.")
    input_keys: list[str]
    options: dict[str, Any]
    idempotency_key: str | None = None
    purged_at: datetime | None = Field(
        default=None, description="When the job's results were removed (DELETE ?purge=true)."
    )
    links: JobLinks


class JobListPublic(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[JobPublic]
    next_cursor: str | None = None


class ResultPublic(BaseModel):
    """One downloadable result of a succeeded job."""

    name: str
    url: str
    media_type: str
    description: str | None = None
    slices: int | None = Field(default=None, description="Slices of an image result.")
    value_min: float | None = Field(default=None, description="Smallest value in the volume.")
    value_max: float | None = Field(default=None, description="Largest value in the volume.")
    window: float | None = Field(default=None, description="Default PNG window width.")
    level: float | None = Field(default=None, description="Default PNG window centre.")


class ResultListPublic(BaseModel):
    """All results of a job (empty unless it succeeded and was not purged)."""

    job_id: str
    items: list[ResultPublic]


# -- uploads ---------------------------------------------------------------------------------
class UploadCreate(BaseModel):
    """Ask for a presigned URL to PUT one raw file straight into object storage."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$",
        description="File name to keep (letters, digits, . _ + = -).",
    )
    study: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Folder under your tenant that groups files of one study (default: a new one).",
    )


class UploadPublic(BaseModel):
    """A presigned PUT: send the file's bytes to ``url`` before ``expires_at``."""

    key: str = Field(description="Raw-bucket key to name in POST /v1/jobs (input_keys).")
    url: str
    method: Literal["PUT"] = "PUT"
    expires_at: datetime


# -- models, health --------------------------------------------------------------------------
class ModelPublic(BaseModel):
    """A weights file the workers load, identified by the sha256 of its bytes."""

    name: str
    file: str
    sha256: str
    size_bytes: int


class ModelListPublic(BaseModel):
    """Models available to jobs."""

    items: list[ModelPublic]


class HealthPublic(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


class CheckPublic(BaseModel):
    """One dependency check of /readyz."""

    ok: bool
    detail: str


class ReadyPublic(BaseModel):
    """Whether S3, Prefect and Ray answer."""

    status: Literal["ready", "not ready"]
    checks: dict[str, CheckPublic]


class HookPublic(BaseModel):
    """Jobs a bucket notification created or found."""

    jobs: list[str]
