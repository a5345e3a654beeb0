"""The API's view of the one :class:`services.settings.Settings` object.

Every API knob is a ``Settings`` field (env prefix ``MRDIFF_``); this module only gives the API
one typed place to read them, with these defaults while a field is not (yet) in ``Settings``:

- ``max_upload_bytes`` (1 GiB): largest multipart upload; larger files use ``/v1/uploads``;
- ``max_json_bytes`` (1 MiB): largest JSON body;
- ``cors_origins`` (none): viewer origins allowed to call the API from a browser;
- ``api_keys_file`` (``<data_dir>/api_keys.json``): the hashed API keys;
- ``presign_seconds`` (3600): lifetime of presigned upload URLs;
- ``minio_webhook_token`` (unset: webhook disabled): bearer token MinIO sends to the hook.
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
        """Read the API fields of ``settings`` (defaults in the module docstring)."""
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
