"""``mrdiff demo``: sample studies through the running stack, end to end.

The demo makes the sample data offline (``mrdiff sample-data``: an undersampled 8-coil
fastMRI-style HDF5 and an MR DICOM series of the same synthetic head), uploads both to the raw
bucket of tenant ``demo`` with a ``job.json`` each, asks for an ``ingest`` run once the quiet
period is over (the scheduled poll would find them too), and follows the jobs through their
records in the results bucket. It finds each study's job by its processing key (content
sha256, options, model sha256, tenant), so a second ``mrdiff demo`` finds the jobs of the first
instead of computing again. Finished results are copied to ``<data_dir>/demo/results``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines.config import PipelineConfig
from pipelines.jobs import job_processing_key
from pipelines.models import DEFAULT_PRIOR, anomaly_unavailable_reason, prior_path
from pipelines.options import JobOptions
from pipelines.prefect_api import INGEST_DEPLOYMENT, start_deployment_run
from services.recon.errors import InputError
from services.settings import Settings
from services.stack.supervisor import StackError
from services.storage.jobs import JobRecord
from services.storage.storage import Storage

DEMO_TENANT = "demo"
SAMPLE_H5 = "sample_brain_8coil_4x.h5"
SAMPLE_DICOM_DIR = "sample_brain_dicom"
FALLBACK_METHOD = "cs-l1"


@dataclass(frozen=True)
class DemoStudy:
    """One sample study: local files, where they go in the raw bucket, and its options."""

    name: str
    description: str
    files: tuple[Path, ...]
    options: JobOptions

    @property
    def folder(self) -> str:
        return f"demo-{self.name}"

    def raw_relative(self, path: Path) -> str:
        return f"{self.folder}/{path.name}"

    def raw_keys(self) -> list[str]:
        return sorted(f"{DEMO_TENANT}/{self.raw_relative(path)}" for path in self.files)


def sample_data(folder: Path, echo: Callable[[str], None]) -> tuple[Path, list[Path]]:
    """The sample HDF5 and DICOM files, made with ``mrdiff sample-data`` if missing."""
    h5 = folder / SAMPLE_H5
    dicom_dir = folder / SAMPLE_DICOM_DIR
    if not (h5.exists() and dicom_dir.is_dir() and any(dicom_dir.iterdir())):
        echo(f"making sample data in {folder} (mrdiff sample-data) ...")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "sample-data", str(folder), "--overwrite"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise InputError(f"mrdiff sample-data failed: {result.stderr.strip()[-500:]}")
    dicom = sorted(path for path in dicom_dir.iterdir() if path.is_file())
    if not h5.exists() or not dicom:
        raise InputError(f"sample data incomplete in {folder}")
    return h5, dicom


def demo_options(settings: Settings, method: str | None) -> tuple[JobOptions, str | None]:
    """Options for the demo and, when the method had to be chosen for you, a note why."""
    defaults = PipelineConfig.from_settings(settings).default_options
    note = None
    if method is None:
        if prior_path(settings.prior_path).exists():
            method = "diffusion"
        else:
            method = FALLBACK_METHOD
            note = (
                f"no diffusion prior weights at {prior_path(settings.prior_path)} "
                f"(expected {DEFAULT_PRIOR.name} once trained): the demo runs {FALLBACK_METHOD}"
            )
    anomaly = anomaly_unavailable_reason() is None
    return defaults.merged({"method": method, "anomaly": anomaly}), note


def demo_studies(h5: Path, dicom: Sequence[Path], options: JobOptions) -> list[DemoStudy]:
    return [
        DemoStudy("kspace", "8-coil k-space, 4x undersampled (fastMRI HDF5)", (h5,), options),
        DemoStudy(
            "dicom",
            "MR DICOM series (k-space simulated, 4x random 1-D mask)",
            tuple(dicom),
            options,
        ),
    ]


def upload(storage: Storage, studies: Sequence[DemoStudy]) -> None:
    """Put each study's files and its ``job.json`` into the raw bucket (options first)."""
    storage.ensure_buckets()
    for study in studies:
        options = json.dumps(study.options.as_record(), indent=1).encode()
        storage.put_raw(DEMO_TENANT, f"{study.folder}/job.json", options)
        for path in study.files:
            storage.put_raw(DEMO_TENANT, study.raw_relative(path), path=path)


def expected_key(study: DemoStudy, settings: Settings) -> str:
    """The processing key the study's job will carry (the same rule as ``create_job``)."""
    digests = {
        key: _sha256(path)
        for key, path in zip(
            study.raw_keys(), sorted(study.files, key=lambda p: p.name), strict=True
        )
    }
    key, _ = job_processing_key(DEMO_TENANT, digests, study.options, settings)
    return key


def request_ingest(settings: Settings) -> str:
    """An ``ingest`` run for the demo tenant, scheduled just after the quiet period."""
    quiet = PipelineConfig.from_settings(settings).ingest_quiet_seconds
    return start_deployment_run(
        settings,
        INGEST_DEPLOYMENT,
        {"tenant": DEMO_TENANT},
        scheduled_time=datetime.now(UTC) + timedelta(seconds=quiet + 1.0),
        tags=["demo"],
    )


def find_jobs(storage: Storage, keys: dict[str, str]) -> dict[str, JobRecord | None]:
    """Study name -> the job owning its processing key (None while ingest has not run)."""
    return {
        name: storage.jobs.find_by_processing_key(DEMO_TENANT, key) for name, key in keys.items()
    }


def wait_for_jobs(
    storage: Storage,
    keys: dict[str, str],
    timeout: float,
    on_update: Callable[[dict[str, JobRecord | None]], None],
    stack_failure: Callable[[], str | None] = lambda: None,
    poll_seconds: float = 1.0,
) -> dict[str, JobRecord | None]:
    """Poll the job records until every study's job is finished (or ``timeout``).

    Raises :class:`~services.stack.supervisor.StackError` as soon as ``stack_failure`` names a
    broken stack (a process exited), instead of waiting out the timeout for results that
    cannot come.
    """
    deadline = time.monotonic() + timeout
    jobs = find_jobs(storage, keys)
    while True:
        on_update(jobs)
        if all(job is not None and job.state.terminal for job in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            return jobs
        reason = stack_failure()
        if reason is not None:
            raise StackError(f"the stack broke while the demo ran: {reason}")
        time.sleep(poll_seconds)
        jobs = find_jobs(storage, keys)


def copy_results(storage: Storage, job: JobRecord, folder: Path) -> list[Path]:
    """Download a finished job's report, HDF5 and first previews to ``folder``."""
    wanted = [
        name
        for name in job.artefacts
        if name in ("report.json", "reconstruction.h5", "anomaly.h5")
        or name.endswith("-000.png")
        or name.endswith("-004.png")
    ]
    return [storage.download_result(job.tenant, job.job_id, name, folder / name) for name in wanted]


def reported_slices(folder: Path) -> int | str:
    """Slices of the study whose results were copied to ``folder`` (its report.json), or "?"."""
    try:
        return int(json.loads((folder / "report.json").read_text())["slices"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
