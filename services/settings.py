"""The one settings object of the mrdiff service.

Every process (CLI, API, Prefect flows, Ray workers) reads its configuration from
:class:`Settings`, filled from ``MRDIFF_*`` environment variables (``MRDIFF_S3_ENDPOINT``,
``MRDIFF_RAY_ADDRESS``, ...) or from keyword arguments. The defaults run the whole stack on one
machine for development; outside ``environment="development"`` the development secrets are
refused, in the spirit of the full-stack-fastapi-template's ``_check_default_secret``.

Secrets have no defaults except the two development ones above (S3 secret key, API-key
pepper); the MinIO webhook token has none at all, so the webhook is disabled until
``MRDIFF_MINIO_WEBHOOK_TOKEN`` is set (and outside development it must then be a real secret).

Add new fields to :class:`Settings` in the section they belong to; keep one object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.recon.errors import InputError

Environment = Literal["development", "production"]
RayAuthMode = Literal["token", "disabled"]

# Development defaults; refused when environment != "development".
DEV_S3_ACCESS_KEY = "mrdiff-dev"
DEV_S3_SECRET_KEY = "mrdiff-dev-secret-change-me"
DEV_API_PEPPER = "mrdiff-dev-pepper-change-me"
MIN_SECRET_LENGTH = 16
PLACEHOLDER_PREFIX = "REPLACE-ME"  # the values deploy/env.example ships with

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest lifetime S3 (SigV4) allows

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


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
    s3_public_endpoint: str | None = Field(
        default=None,
        description="URL clients reach S3 at (presigned URLs are signed for it), e.g. "
        "https://s3.example.org, or http://127.0.0.1:9000 when the services reach S3 by a "
        "private name; host:port takes the scheme of s3_secure. None: s3_endpoint.",
    )

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
    ray_dashboard_port: int = Field(
        default=8265,
        ge=1,
        le=65535,
        description="Dashboard of the Ray head that `mrdiff up` starts (on 127.0.0.1).",
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
    ingest_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the scheduled ingest polls the raw bucket."
    )
    ingest_quiet_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A study folder is complete once nothing in it changed for this long.",
    )
    default_job_options: dict[str, Any] = Field(
        default_factory=dict,
        description='Options (JSON) for inputs without a job.json, e.g. {"method": "cs-l1"}.',
    )

    # -- HTTP API -----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_pepper: SecretStr = Field(
        default=SecretStr(DEV_API_PEPPER),
        description="Server-side secret mixed into hashes of API keys.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="JSON file of the hashed API keys; None: <data_dir>/api_keys.json.",
    )
    max_upload_bytes: int = Field(
        default=GIB,
        ge=KIB,
        description="Largest multipart upload to POST /v1/jobs (413 above it); larger raw "
        "files go straight to S3 through a presigned URL from POST /v1/uploads.",
    )
    max_json_bytes: int = Field(
        default=MIB,
        ge=KIB,
        le=64 * MIB,
        description="Largest body of any other request (JSON); 413 above it.",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Browser origins (scheme://host[:port]) of viewer pages served elsewhere "
        "that may call the API; comma-separated in MRDIFF_CORS_ORIGINS. Empty: none. '*' is "
        "accepted in development only.",
    )
    presign_seconds: int = Field(
        default=3600,
        ge=60,
        le=MAX_PRESIGN_SECONDS,
        description="Lifetime of the presigned upload URLs of POST /v1/uploads.",
    )
    max_concurrent_submissions: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Submissions (upload checks, S3 writes, Prefect flow-run creation) one API "
        "process works on at once; more wait their turn, so a burst neither starves status "
        "reads of threads nor overloads S3 and the Prefect server.",
    )
    minio_webhook_token: SecretStr | None = Field(
        default=None,
        description="Bearer token MinIO's webhook target sends to POST /v1/hooks/minio. There "
        "is no default: unset, the hook is disabled (404) in every environment; outside "
        "development a set token must be a real secret.",
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

    @field_validator("s3_public_endpoint", mode="before")
    @classmethod
    def _public_endpoint_is_url(cls, value: Any, info: ValidationInfo) -> Any:
        """``http(s)://host[:port]`` (no path), or ``host:port`` with the scheme of
        ``s3_secure`` -> ``http(s)://host[:port]``."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            return value
        text = value.strip().rstrip("/")
        scheme = "https" if info.data.get("s3_secure") else "http"
        url = text if "://" in text else f"{scheme}://{text}"
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme not in {"http", "https"}
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
            or (port is None and ":" in parts.netloc.rsplit("]", 1)[-1])
        ):
            raise ValueError(f"s3_public_endpoint must be http(s)://host[:port], got {value!r}")
        return url

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_from_text(cls, value: Any) -> Any:
        """Accept a comma-separated string (the environment) as well as a sequence."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(item).strip().rstrip("/") for item in value if str(item).strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _valid_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin (scheme://host[:port])"
                )
        return value

    @field_validator("minio_webhook_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        """``MRDIFF_MINIO_WEBHOOK_TOKEN=`` (empty) means no token: the hook stays disabled."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_keys_file_is_default(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys_file")
    @classmethod
    def _absolute_keys_file(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

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
        if "*" in self.cors_origins:
            raise ValueError(
                f"MRDIFF_CORS_ORIGINS: '*' is for development only; list the viewer origins "
                f"for environment={self.environment}"
            )
        secrets: dict[str, tuple[SecretStr, str | None]] = {
            "MRDIFF_S3_SECRET_KEY": (self.s3_secret_key, DEV_S3_SECRET_KEY),
            "MRDIFF_API_PEPPER": (self.api_pepper, DEV_API_PEPPER),
        }
        if self.minio_webhook_token is not None:
            secrets["MRDIFF_MINIO_WEBHOOK_TOKEN"] = (self.minio_webhook_token, None)
        for variable, (secret, default) in secrets.items():
            value = secret.get_secret_value()
            if value == default:
                raise ValueError(
                    f"{variable} is the development default; set a real secret for "
                    f"environment={self.environment}"
                )
            if value.startswith(PLACEHOLDER_PREFIX):
                raise ValueError(
                    f"{variable} is still the placeholder of deploy/env.example; set a real "
                    f"secret for environment={self.environment}"
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
    def s3_public_url(self) -> str:
        """Where clients reach S3: ``s3_public_endpoint``, else :attr:`s3_url`."""
        return self.s3_public_endpoint or self.s3_url

    @property
    def api_keys_path(self) -> Path:
        """The hashed API keys: ``api_keys_file``, else ``<data_dir>/api_keys.json``."""
        return self.api_keys_file or self.data_dir / "api_keys.json"

    @property
    def api_cache_dir(self) -> Path:
        """Local copies of published results the API serves slice by slice."""
        return self.data_dir / "api_cache"

    @property
    def api_uploads_dir(self) -> Path:
        """Scratch space for uploads while the API checks them."""
        return self.data_dir / "api_uploads"

    @property
    def minio_webhook_enabled(self) -> bool:
        """True when a webhook token is set (the hook answers 404 otherwise)."""
        return self.minio_webhook_token is not None

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
