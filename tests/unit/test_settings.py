"""Settings: environment variables, validation, refusal of development secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.recon.errors import InputError
from services.settings import (
    DEV_API_PEPPER,
    DEV_S3_SECRET_KEY,
    GIB,
    Settings,
    load_settings,
)

STRONG = {"s3_secret_key": "s3-secret-of-some-length", "api_pepper": "pepper-of-some-length"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MRDIFF_"):
            monkeypatch.delenv(name)


def test_defaults_run_a_development_stack_on_loopback(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.environment == "development"
    assert settings.s3_url == "http://127.0.0.1:9000"
    assert settings.raw_bucket != settings.results_bucket
    assert settings.ray_address is None and settings.is_local_ray
    assert settings.actors == 1 and settings.cpus_per_actor == 1
    assert settings.api_host == "127.0.0.1"
    assert settings.s3_data_dir == tmp_path.resolve() / "s3"
    assert settings.s3_secret_key.get_secret_value() == DEV_S3_SECRET_KEY
    assert DEV_S3_SECRET_KEY not in repr(settings)


def test_environment_variables_use_the_mrdiff_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRDIFF_S3_ENDPOINT", "minio.internal:9000")
    monkeypatch.setenv("MRDIFF_ACTORS", "3")
    monkeypatch.setenv("MRDIFF_CPUS_PER_ACTOR", "2")
    monkeypatch.setenv("MRDIFF_RAY_ADDRESS", "auto")
    monkeypatch.setenv("MRDIFF_PREFECT_API_URL", "http://127.0.0.1:4200/api")
    settings = Settings()
    assert settings.s3_endpoint == "minio.internal:9000"
    assert (settings.actors, settings.cpus_per_actor) == (3, 2)
    assert settings.ray_address == "auto" and not settings.is_local_ray
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api"


def test_url_endpoint_sets_secure() -> None:
    secure = load_settings(s3_endpoint="https://s3.example.org:443/")
    assert (secure.s3_endpoint, secure.s3_secure) == ("s3.example.org:443", True)
    assert secure.s3_url == "https://s3.example.org:443"
    plain = load_settings(s3_endpoint="http://10.0.0.5:9000")
    assert (plain.s3_endpoint, plain.s3_secure) == ("10.0.0.5:9000", False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"environment": "production"}, "MRDIFF_S3_SECRET_KEY is the development default"),
        (
            {"environment": "production", "s3_secret_key": STRONG["s3_secret_key"]},
            "MRDIFF_API_PEPPER is the development default",
        ),
        (
            {"environment": "production", "s3_secret_key": "short", "api_pepper": "x" * 20},
            "MRDIFF_S3_SECRET_KEY must be at least 16 characters",
        ),
        ({"raw_bucket": "Raw_Bucket"}, "MRDIFF_RAW_BUCKET"),
        ({"raw_bucket": "same", "results_bucket": "same"}, "must differ"),
        ({"s3_endpoint": "host:9000/path"}, "MRDIFF_S3_ENDPOINT"),
        ({"actors": 0}, "MRDIFF_ACTORS"),
        ({"api_port": 70000}, "MRDIFF_API_PORT"),
        ({"environment": "staging"}, "MRDIFF_ENVIRONMENT"),
        ({"max_upload_bytes": 10}, "MRDIFF_MAX_UPLOAD_BYTES"),
        ({"max_json_bytes": 10**9}, "MRDIFF_MAX_JSON_BYTES"),
        ({"presign_seconds": 8 * 24 * 3600}, "MRDIFF_PRESIGN_SECONDS"),
        ({"cors_origins": "https://ok.org,viewer.example.org"}, "MRDIFF_CORS_ORIGINS"),
        ({"cors_origins": "https://ok.org/path"}, "MRDIFF_CORS_ORIGINS"),
        ({"s3_public_endpoint": "https://s3.example.org/bucket"}, "MRDIFF_S3_PUBLIC_ENDPOINT"),
        ({"s3_public_endpoint": "ftp://s3.example.org"}, "MRDIFF_S3_PUBLIC_ENDPOINT"),
        (
            {**STRONG, "environment": "production", "cors_origins": "*"},
            "MRDIFF_CORS_ORIGINS: '\\*' is for development only",
        ),
        (
            {**STRONG, "environment": "production", "minio_webhook_token": "short"},
            "MRDIFF_MINIO_WEBHOOK_TOKEN must be at least 16 characters",
        ),
        (
            {
                **STRONG,
                "environment": "production",
                "minio_webhook_token": "REPLACE-ME-long-random-token",
            },
            "MRDIFF_MINIO_WEBHOOK_TOKEN is still the placeholder",
        ),
        (
            {
                "environment": "production",
                "api_pepper": "REPLACE-ME-long-random-pepper",
                "s3_secret_key": STRONG["s3_secret_key"],
            },
            "MRDIFF_API_PEPPER is still the placeholder",
        ),
    ],
)
def test_bad_settings_raise_one_line_input_errors(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        load_settings(**overrides)
    assert "\n" not in str(raised.value)


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRDIFF_ENVIRONMENT", "production")
    monkeypatch.setenv("MRDIFF_S3_SECRET_KEY", STRONG["s3_secret_key"])
    monkeypatch.setenv("MRDIFF_API_PEPPER", STRONG["api_pepper"])
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.api_pepper.get_secret_value() != DEV_API_PEPPER


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.actors = 5


def test_api_settings_have_safe_defaults(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.max_upload_bytes == 1 * GIB
    assert settings.max_json_bytes == 1024 * 1024
    assert settings.cors_origins == ()
    assert settings.presign_seconds == 3600
    assert settings.minio_webhook_token is None and not settings.minio_webhook_enabled
    assert settings.api_keys_path == tmp_path.resolve() / "api_keys.json"
    assert settings.api_cache_dir == tmp_path.resolve() / "api_cache"
    assert settings.s3_public_endpoint is None and settings.s3_public_url == settings.s3_url


def test_api_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MRDIFF_MAX_UPLOAD_BYTES", str(2 * GIB))
    monkeypatch.setenv("MRDIFF_MAX_JSON_BYTES", "65536")
    monkeypatch.setenv("MRDIFF_CORS_ORIGINS", "https://viewer.example.org, http://127.0.0.1:5173/")
    monkeypatch.setenv("MRDIFF_API_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("MRDIFF_PRESIGN_SECONDS", "600")
    monkeypatch.setenv("MRDIFF_MINIO_WEBHOOK_TOKEN", "hook-token-0123456789")
    monkeypatch.setenv("MRDIFF_S3_PUBLIC_ENDPOINT", "s3.example.org:443")
    settings = load_settings()
    assert settings.max_upload_bytes == 2 * GIB and settings.max_json_bytes == 65536
    assert settings.cors_origins == ("https://viewer.example.org", "http://127.0.0.1:5173")
    assert settings.api_keys_path == tmp_path.resolve() / "keys.json"
    assert settings.presign_seconds == 600
    assert settings.minio_webhook_enabled
    assert "hook-token" not in repr(settings)
    assert settings.s3_public_url == "http://s3.example.org:443"


def test_an_empty_webhook_token_disables_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRDIFF_MINIO_WEBHOOK_TOKEN", "")
    assert load_settings().minio_webhook_token is None


def test_production_runs_without_a_webhook_token_and_accepts_a_real_one() -> None:
    production = {**STRONG, "environment": "production"}
    assert not load_settings(**production).minio_webhook_enabled
    token = load_settings(**production, minio_webhook_token="a-real-webhook-token-123")
    assert token.minio_webhook_enabled


def test_public_endpoint_keeps_its_scheme() -> None:
    settings = load_settings(s3_public_endpoint="https://s3.example.org/")
    assert settings.s3_public_url == "https://s3.example.org"
    assert settings.s3_url == "http://127.0.0.1:9000"
