"""Pipeline knobs, read from the one settings object (:class:`services.settings.Settings`).

Fields (``MRDIFF_`` environment variables): ``ingest_interval_seconds`` (how often the scheduled
``ingest`` deployment polls the raw bucket), ``ingest_quiet_seconds`` (a study folder counts as
complete once nothing in it changed for this long; DICOM series arrive instance by instance)
and ``default_job_options`` (JSON: options for inputs without a ``job.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import JobOptions, default_job_options
from services.settings import Settings


@dataclass(frozen=True)
class PipelineConfig:
    """What the flows need beyond storage and compute settings."""

    ingest_interval_seconds: float
    ingest_quiet_seconds: float
    default_options: JobOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        """The knobs of ``settings``; InputError when the default job options are invalid."""
        return cls(
            ingest_interval_seconds=settings.ingest_interval_seconds,
            ingest_quiet_seconds=settings.ingest_quiet_seconds,
            default_options=default_job_options(dict(settings.default_job_options)),
        )
