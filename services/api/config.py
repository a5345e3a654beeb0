"""The API's view of the one :class:`services.settings.Settings` object.

Every API knob lives in ``Settings`` (env prefix ``MRDIFF_``); this module only gives the API
one typed place to read them, with the documented defaults for fields a deployment may not set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.settings import Settings

GIB = 1024**3
DEFAULT_MAX_UPLOAD_BYTES = 1 * GIB
DEFAULT_MAX_JSON_BYTES = 1024 * 1024
DEFAULT_PRESIGN_SECONDS = 3600


@dataclass(frozen=True)
class ApiConfig:
    """Limits and locations the HTTP API uses, derived from :class:`Settings`."""

    max_upload_bytes: int
    max_json_bytes: int
    cors_origins: tuple[str, ...]
    api_keys_file: Path
    cache_dir: Path
    presign_seconds: int
    minio_webhook_token: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        """Read the API fields of ``settings`` (defaults documented in services/api/README)."""
        origins = getattr(settings, "cors_origins", ())
        if isinstance(origins, str):
            origins = [origin.strip() for origin in origins.split(",") if origin.strip()]
        token = getattr(settings, "minio_webhook_token", None)
        if token is not None and hasattr(token, "get_secret_value"):
            token = token.get_secret_value()
        keys_file = getattr(settings, "api_keys_file", None)
        return cls(
            max_upload_bytes=int(getattr(settings, "max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES)),
            max_json_bytes=int(getattr(settings, "max_json_bytes", DEFAULT_MAX_JSON_BYTES)),
            cors_origins=tuple(origins),
            api_keys_file=Path(keys_file) if keys_file else settings.data_dir / "api_keys.json",
            cache_dir=settings.data_dir / "api_cache",
            presign_seconds=int(getattr(settings, "presign_seconds", DEFAULT_PRESIGN_SECONDS)),
            minio_webhook_token=token or None,
        )
