"""Pipeline knobs, read from the one settings object (:class:`services.settings.Settings`).

Fields (``MRDIFF_`` environment variables): ``ingest_interval_seconds`` (how often the scheduled
``ingest`` deployment polls the raw bucket), ``ingest_quiet_seconds`` (a study folder counts as
complete once nothing in it changed for this long; DICOM series arrive instance by instance)
and ``default_job_options`` (JSON: options for inputs without a ``job.json``). The defaults
below apply while a field is not declared in Settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipelines.options import JobOptions, default_job_options
from services.recon.errors import InputError
from services.settings import Settings

DEFAULT_INGEST_INTERVAL_SECONDS = 30.0
DEFAULT_INGEST_QUIET_SECONDS = 10.0


@dataclass(frozen=True)
class PipelineConfig:
    """What the flows need beyond storage and compute settings."""

    ingest_interval_seconds: float
    ingest_quiet_seconds: float
    default_options: JobOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        overrides: Any = getattr(settings, "default_job_options", None) or {}
        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides)
            except json.JSONDecodeError as error:
                raise InputError(
                    f"MRDIFF_DEFAULT_JOB_OPTIONS: not valid JSON ({error.msg})"
                ) from None
        return cls(
            ingest_interval_seconds=float(
                getattr(settings, "ingest_interval_seconds", DEFAULT_INGEST_INTERVAL_SECONDS)
            ),
            ingest_quiet_seconds=float(
                getattr(settings, "ingest_quiet_seconds", DEFAULT_INGEST_QUIET_SECONDS)
            ),
            default_options=default_job_options(dict(overrides)),
        )
