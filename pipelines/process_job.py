"""The ``process-job`` flow: one job record in, published results (or a clear failure) out.

Steps, each a Prefect task so the UI shows where time goes and what failed:

1. ``start-job``: the record goes ``queued -> running`` with this flow run's id;
2. ``fetch-inputs``: download the job's raw objects (retried on connection errors);
3. ``load-study``: detect the format (fastMRI HDF5, ISMRMRD, DICOM series, NIfTI), read and
   validate it; a bad input is moved to quarantine with the reason and the job fails with it;
4. ``reconstruct`` (and ``anomaly-maps`` when asked): slices fan out to the Ray worker pool with
   progress per slice in the job record; cached by the job's processing key (a content hash of
   inputs, options and models), so a retried job does not recompute finished work;
5. ``write-results`` + ``publish-results``: HDF5, NIfTI, PNG previews and ``report.json`` are
   staged, then published only if the job was not cancelled meanwhile, and the record says
   ``succeeded``; 6. artifacts: a per-slice table, a summary with links, a viewer link.

Cancellation (record state ``cancelled``) is checked between slices and before publishing;
a cancelled job never publishes. Anomaly maps are one more task (``anomaly-maps``) that runs
when the job asks for them and the models are installed; until then such jobs fail with that
reason instead of producing anything that looks like an anomaly map.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Completed, Failed, State

from pipelines.artifacts import ProgressArtifact, publish_job_artifacts
from pipelines.compute import ComputeRun, JobCancelledError, SliceProgress, anomaly_slices
from pipelines.compute import reconstruct_slices as fan_out_reconstruction
from pipelines.models import require_models
from pipelines.options import JobOptions
from pipelines.prefect_api import PROCESS_JOB_FLOW
from pipelines.results import REPORT_NAME, JobOutputs, build_report, write_outputs
from pipelines.study import Study, detect_kind, plan_study, read_study_input
from pipelines.workers import worker_pool
from services.recon.errors import InputError
from services.settings import Settings, get_settings
from services.storage.errors import InvalidTransitionError, ObjectNotFoundError
from services.storage.jobs import JobRecord, JobState
from services.storage.storage import Storage

log = logging.getLogger(__name__)
CACHE_LIFETIME = timedelta(days=7)
P = ParamSpec("P")
R = TypeVar("R")


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a run (unit tests of helpers)
        return log


# -- tasks --------------------------------------------------------------------------------------
@task(name="start-job", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def start_job(storage: Storage, record: JobRecord, flow_run_id: str | None) -> JobRecord:
    """Mark the job running under this flow run (a re-run of a running job is re-queued first)."""
    if record.state is JobState.RUNNING:
        storage.jobs.requeue(record.tenant, record.job_id, f"restarted by flow run {flow_run_id}")
    return storage.jobs.start(record.tenant, record.job_id, flow_run_id=flow_run_id, total=0)


@task(name="fetch-inputs", retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE)
def fetch_inputs(storage: Storage, input_keys: tuple[str, ...], folder: Path) -> list[Path]:
    """Download the job's raw objects; a missing object is an input error."""
    folder.mkdir(parents=True, exist_ok=True)
    several = len(input_keys) > 1
    paths = []
    for index, key in enumerate(input_keys):
        name = key.rsplit("/", 1)[-1]
        target = folder / (f"{index:05d}-{name}" if several else name)
        try:
            paths.append(storage.download_raw(key, target))
        except ObjectNotFoundError:
            raise InputError(f"input {key!r} is no longer in the raw bucket") from None
    return paths


@task(name="load-study", cache_policy=NO_CACHE)
def load_study(paths: list[Path], options: JobOptions) -> Study:
    """Detect the format, read and validate the input, and plan the work."""
    kind = detect_kind(paths)
    data = read_study_input(paths)
    return plan_study(kind, data, options)


def _compute_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    key = parameters.get("processing_key")
    return f"{parameters.get('stage')}-{key}" if key else None


def _compute_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A compute stage's task: cached by processing key, retried once unless cancelled or the
    input is bad."""
    return task(
        name=name,
        cache_key_fn=_compute_cache_key,
        cache_expiration=CACHE_LIFETIME,
        persist_result=True,
        retries=1,
        retry_condition_fn=lambda task, run, state: not _is_cancel_or_input_error(state),
    )


@_compute_task("reconstruct")
def reconstruct(
    pool: Any,
    study: Study,
    options: JobOptions,
    progress: SliceProgress,
    processing_key: str | None,
    stage: str = "reconstruct",
) -> ComputeRun:
    """Reconstruct every slice on the worker pool (cached by processing key)."""
    assert study.kspace is not None
    volume = study.kspace
    return fan_out_reconstruction(
        pool, volume.kspace, volume.mask, volume.multicoil, options.recon_options(), progress
    )


@_compute_task("anomaly-maps")
def anomaly_maps(
    pool: Any,
    images: Any,
    options: JobOptions,
    progress: SliceProgress,
    processing_key: str | None,
    stage: str = "anomaly",
) -> ComputeRun:
    """Anomaly maps (Wolleb et al. 2022, via ``engine.anomaly_slice``) of every slice."""
    return anomaly_slices(pool, images, options.recon_options(), progress)


def _is_cancel_or_input_error(state: State) -> bool:
    try:
        state.result(raise_on_failure=True)
    except (JobCancelledError, InputError):
        return True
    except Exception:
        return False
    return False


@task(name="write-results", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def write_results(storage: Storage, outputs: JobOutputs, folder: Path) -> tuple[str, list[str]]:
    """Write every artefact locally and stage it; returns the staging attempt and the names."""
    names = write_outputs(outputs, folder)
    staged = storage.stage_results(outputs.tenant, outputs.job_id)
    with staged:
        for name in names:
            staged.put_file(name, folder / name)
    return staged.attempt, names


@task(name="publish-results", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def publish_results(
    storage: Storage,
    tenant: str,
    job_id: str,
    attempt: str,
    names: list[str],
    timings: dict[str, float],
) -> JobRecord:
    """Publish the staged results unless the job was cancelled; then mark it succeeded."""
    staged = storage.stage_results(tenant, job_id, attempt)
    if storage.jobs.get(tenant, job_id).state is not JobState.RUNNING:
        staged.discard()
        raise JobCancelledError(f"job {job_id} was cancelled before its results were published")
    staged.publish()
    return storage.jobs.succeed(tenant, job_id, artefacts=names, timings=timings)


# -- the flow -----------------------------------------------------------------------------------
@flow(name=PROCESS_JOB_FLOW, flow_run_name="job-{job_id}", persist_result=False)
def process_job(tenant: str, job_id: str) -> State:
    """Process one job: read, validate, compute on Ray, write, publish (see module docs)."""
    settings = get_settings()
    return run_job(Storage.from_settings(settings), settings, tenant, job_id)


def run_job(storage: Storage, settings: Settings, tenant: str, job_id: str) -> State:
    """The body of :func:`process_job` (the Storage and Settings it works with are given)."""
    logger = _logger()
    started = time.perf_counter()
    record = storage.jobs.get(tenant, job_id)
    if record.state.terminal:
        logger.info("job %s is already %s; nothing to do", job_id, record.state)
        summary = {"job_id": job_id, "state": record.state.value}
        if record.state is JobState.CANCELLED:
            return Cancelled(message=f"job {job_id} was cancelled", data=summary)
        return Completed(message=f"job {job_id} is already {record.state}", data=summary)
    try:
        options = JobOptions.parse(dict(record.options), f"job {job_id} options")
        require_models(options, settings.prior_path)
    except InputError as error:
        storage.jobs.fail(tenant, job_id, str(error))
        return Failed(message=str(error))
    flow_run_id = current_flow_run.get_id()
    record = start_job(storage, record, flow_run_id)
    try:
        return _process(storage, settings, record, options, flow_run_id, started)
    except JobCancelledError as cancelled:
        logger.info("job %s cancelled: %s", job_id, cancelled)
        return Cancelled(message=str(cancelled), data={"job_id": job_id, "state": "cancelled"})
    except InputError as error:
        reason = f"invalid input: {error}"
        _quarantine(storage, record.input_keys, reason)
        _fail(storage, tenant, job_id, reason)
        return Failed(message=reason)
    except Exception as error:
        _fail(storage, tenant, job_id, f"{type(error).__name__}: {error}")
        raise


def _process(
    storage: Storage,
    settings: Settings,
    record: JobRecord,
    options: JobOptions,
    flow_run_id: str | None,
    started: float,
) -> State:
    logger = _logger()
    tenant, job_id = record.tenant, record.job_id
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"mrdiff-{job_id}-") as work:
        folder = Path(work)
        clock = time.perf_counter()
        paths = fetch_inputs(storage, record.input_keys, folder / "inputs")
        timings["fetch_seconds"] = time.perf_counter() - clock
        clock = time.perf_counter()
        study = load_study(paths, options)
        timings["read_seconds"] = time.perf_counter() - clock
        logger.info("job %s: %s, %d slices", job_id, study.kind, study.slices)
        progress_sink = _progress_sink(storage, tenant, job_id, ProgressArtifact(job_id))
        progress_sink(0, study.work_items)
        load_prior = options.method == "diffusion" or options.anomaly
        clock = time.perf_counter()
        with worker_pool(settings, load_prior=load_prior) as pool:
            timings["pool_start_seconds"] = time.perf_counter() - clock
            compute_started = time.perf_counter()
            recon_run: ComputeRun | None = None
            if study.kspace is not None:
                recon_run = reconstruct(
                    pool,
                    study,
                    options,
                    SliceProgress(progress_sink, study.slices, 0, study.work_items),
                    record.processing_key,
                )
            anomaly_run: ComputeRun | None = None
            if study.anomaly:
                anomaly_run = anomaly_maps(
                    pool,
                    _anomaly_images(study, recon_run),
                    options,
                    SliceProgress(
                        progress_sink,
                        study.slices,
                        study.work_items - study.slices,
                        study.work_items,
                    ),
                    record.processing_key,
                )
            models = _model_versions(pool, record, options)
        compute_wall = time.perf_counter() - compute_started
        compute_sum = sum(run.compute_seconds for run in (recon_run, anomaly_run) if run)
        timings.update(compute_wall_seconds=compute_wall, compute_seconds=compute_sum)
        outputs = JobOutputs(
            job_id=job_id,
            tenant=tenant,
            options=options,
            study=study,
            input_keys=record.input_keys,
            content_sha256=record.content_sha256,
            models=models,
            reconstruction=recon_run.results if recon_run else None,
            anomaly=anomaly_run.results if anomaly_run else None,
            timings=timings,
            flow_run_id=flow_run_id,
        )
        clock = time.perf_counter()
        # report.json carries the pipeline timings up to the end of writing; publishing follows.
        timings["pipeline_seconds"] = time.perf_counter() - started - timings["pool_start_seconds"]
        timings["overhead_fraction"] = _overhead(timings["pipeline_seconds"], compute_sum)
        attempt, names = write_results(storage, outputs, folder / "results")
        timings["write_seconds"] = time.perf_counter() - clock
        clock = time.perf_counter()
        final = publish_results(storage, tenant, job_id, attempt, names, _final(timings, started))
        timings["publish_seconds"] = time.perf_counter() - clock
        outputs.timings = {**final.timings, "publish_seconds": timings["publish_seconds"]}
        report = build_report(outputs)  # for the artifacts: timings up to publishing
    _artifacts(storage, settings, tenant, job_id, report, names)
    logger.info(
        "job %s succeeded: %d artefacts, compute %.2f s, overhead %.1f %%",
        job_id,
        len(names),
        compute_sum,
        100 * final.timings.get("overhead_fraction", 0.0),
    )
    return Completed(
        message=f"job {job_id} succeeded",
        data={
            "job_id": job_id,
            "state": final.state.value,
            "artefacts": names,
            "timings": dict(final.timings),
        },
    )


def _final(timings: Mapping[str, float], started: float) -> dict[str, float]:
    """Timings stored in the record: pipeline wall time up to now (publish included)."""
    final = dict(timings)
    pool_start = timings.get("pool_start_seconds", 0.0)
    final["pipeline_seconds"] = time.perf_counter() - started - pool_start
    final["overhead_fraction"] = _overhead(final["pipeline_seconds"], timings["compute_seconds"])
    return {key: round(value, 4) for key, value in final.items()}


def _overhead(pipeline_seconds: float, compute_seconds: float) -> float:
    """(pipeline wall time - compute) / compute (the issue's pipeline-overhead measure)."""
    return (pipeline_seconds - compute_seconds) / compute_seconds if compute_seconds > 0 else 0.0


def _anomaly_images(study: Study, recon_run: ComputeRun | None) -> Any:
    import numpy as np

    if study.images is not None:
        return study.images.images
    assert recon_run is not None
    return np.stack([result.reconstruction for result in recon_run.results])


def _model_versions(pool: Any, record: JobRecord, options: JobOptions) -> dict[str, str]:
    """Name -> sha256 of the models the workers ran (none for baseline methods)."""
    if options.method == "diffusion" or options.anomaly:
        return dict(pool.model_versions())
    return dict(record.model_sha256)


def _progress_sink(storage: Storage, tenant: str, job_id: str, artifact: ProgressArtifact) -> Any:
    """Write progress into the record; False (stop) once the job is no longer running."""

    def sink(done: int, total: int) -> bool:
        try:
            storage.jobs.set_progress(tenant, job_id, done, total)
        except InvalidTransitionError:
            return False
        try:
            artifact.update(done, total)
        except Exception as error:  # the UI's progress bar must never stop the job
            _logger().warning("could not update the progress artifact: %s", error)
        return True

    return sink


def _quarantine(storage: Storage, input_keys: tuple[str, ...], reason: str) -> None:
    for key in input_keys:
        try:
            moved = storage.quarantine(key, reason)
            _logger().warning("quarantined %s -> %s: %s", key, moved.object_key, reason)
        except (ObjectNotFoundError, InputError) as error:
            _logger().warning("could not quarantine %s: %s", key, error)


def _fail(storage: Storage, tenant: str, job_id: str, reason: str) -> None:
    with contextlib.suppress(InvalidTransitionError):  # cancelled meanwhile: keep that state
        storage.jobs.fail(tenant, job_id, reason)


def _artifacts(
    storage: Storage,
    settings: Settings,
    tenant: str,
    job_id: str,
    report: Mapping[str, Any],
    names: list[str],
) -> None:
    try:
        publish_job_artifacts(storage, settings, tenant, job_id, report, names)
    except Exception as error:  # artifacts are for operators; results are already published
        _logger().warning("could not create Prefect artifacts for job %s: %s", job_id, error)


__all__ = ["REPORT_NAME", "process_job", "run_job"]
