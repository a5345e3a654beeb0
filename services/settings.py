"""The one settings object of the mrdiff service.

Every process (CLI, API, Prefect flows, Ray workers) reads its configuration from
:class:`Settings`, filled from ``MRDIFF_*`` environment variables (``MRDIFF_S3_ENDPOINT``,
``MRDIFF_RAY_ADDRESS``, ...) or from keyword arguments. The defaults run the whole stack on one
machine for development; outside ``environment="development"`` the development secrets are
refused, in the spirit of the full-stack-fastapi-template's ``_check_default_secret``.

Add new fields to :class:`Settings` in the section they belong to; keep one object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.recon.errors import InputError

Environment = Literal["development", "production"]
RayAuthMode = Literal["token", "disabled"]

# Development defaults; refused when environment != "development".
DEV_S3_ACCESS_KEY = "mrdiff-dev"
DEV_S3_SECRET_KEY = "mrdiff-dev-secret-change-me"
DEV_API_PEPPER = "mrdiff-dev-pepper-change-me"
MIN_SECRET_LENGTH = 16

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Settings(BaseSettings):
    """Configuration of the mrdiff service; environment variables use the prefix ``MRDIFF_``."""

    model_config = SettingsConfigDict(
        env_prefix="MRDIFF_",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # -- general ------------------------------------------------------------------------------
    environment: Environment = "development"
    data_dir: Path = Field(
        default=Path("data"),
        description="Local working data: S3 server files, Prefect home, caches.",
    )

    # -- object storage (S3 / MinIO / nanio) --------------------------------------------------
    s3_endpoint: str = Field(
        default="127.0.0.1:9000",
        description="host:port of the S3 service; an http:// or https:// prefix sets s3_secure.",
    )
    s3_access_key: str = DEV_S3_ACCESS_KEY
    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET_KEY)
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    raw_bucket: str = "mrdiff-raw"
    results_bucket: str = "mrdiff-results"
    s3_timeout_seconds: float = Field(default=30.0, gt=0)

    # -- compute (Ray) -----------------------------------------------------------------------
    ray_address: str | None = Field(
        default=None,
        description="Existing cluster to join ('auto', 'host:6379', 'ray://...'); None starts "
        "a local one.",
    )
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a locally started cluster; None = all."
    )
    ray_auth_mode: RayAuthMode | None = Field(
        default=None,
        description="None: 'disabled' for a local development cluster on loopback, "
        "'token' otherwise.",
    )
    actors: int = Field(default=1, ge=1, description="Reconstruction actors in the pool.")
    cpus_per_actor: int = Field(default=1, ge=1, description="CPUs (and torch threads) each.")
    gpus_per_actor: float | None = Field(
        default=None, ge=0, description="None: 1 when the cluster has GPUs, else 0."
    )
    prior_path: Path | None = Field(
        default=None, description="Diffusion prior weights; None uses the shipped model."
    )

    # -- orchestration (Prefect) -------------------------------------------------------------
    prefect_api_url: str | None = Field(
        default=None, description="e.g. http://127.0.0.1:4200/api; None uses Prefect's own."
    )

    # -- HTTP API -----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_pepper: SecretStr = Field(
        default=SecretStr(DEV_API_PEPPER),
        description="Server-side secret mixed into hashes of API keys.",
    )

    @model_validator(mode="before")
    @classmethod
    def _endpoint_scheme_sets_secure(cls, values: Any) -> Any:
        """Accept ``https://host:port`` as shorthand for ``host:port`` with ``s3_secure``."""
        if not isinstance(values, dict):
            return values
        endpoint = values.get("s3_endpoint")
        if isinstance(endpoint, str):
            match = re.match(r"^(https?)://", endpoint.strip())
            if match:
                values = dict(values)
                values["s3_endpoint"] = endpoint.strip()[match.end() :].rstrip("/")
                values.setdefault("s3_secure", match.group(1) == "https")
        return values

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?", value) or "/" in value:
            raise ValueError(f"s3_endpoint must be host:port, got {value!r}")
        return value

    @field_validator("raw_bucket", "results_bucket")
    @classmethod
    def _valid_bucket_name(cls, value: str) -> str:
        if not _BUCKET_NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _refuse_default_secrets_outside_development(self) -> Settings:
        if self.raw_bucket == self.results_bucket:
            raise ValueError("raw_bucket and results_bucket must differ")
        if self.environment == "development":
            return self
        secrets = {
            "MRDIFF_S3_SECRET_KEY": (self.s3_secret_key, DEV_S3_SECRET_KEY),
            "MRDIFF_API_PEPPER": (self.api_pepper, DEV_API_PEPPER),
        }
        for variable, (secret, default) in secrets.items():
            value = secret.get_secret_value()
            if value == default:
                raise ValueError(
                    f"{variable} is the development default; set a real secret for "
                    f"environment={self.environment}"
                )
            if len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{variable} must be at least {MIN_SECRET_LENGTH} characters for "
                    f"environment={self.environment}"
                )
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def s3_url(self) -> str:
        """The S3 endpoint as a URL (``http://127.0.0.1:9000``)."""
        return f"{'https' if self.s3_secure else 'http'}://{self.s3_endpoint}"

    @property
    def s3_data_dir(self) -> Path:
        """Folder where the locally started S3 server keeps its objects."""
        return self.data_dir / "s3"

    @property
    def is_local_ray(self) -> bool:
        """True when no cluster address is configured, so a local cluster is started."""
        return not self.ray_address


def load_settings(**overrides: Any) -> Settings:
    """Read :class:`Settings` from the environment (plus ``overrides``).

    Raises :class:`InputError` with a one-line message naming the offending setting, so the
    CLI can exit with code 2 and the API refuses to start with a readable reason.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first.get("loc", ()))
        name = f"MRDIFF_{location.upper()}" if location else "settings"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InputError(f"{name}: {message}" if location else message) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (FastAPI dependency and CLI default)."""
    return load_settings()
