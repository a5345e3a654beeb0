"""`mrdiff bench pipeline`: slices per minute through the whole pipeline vs the core alone.

Protocol. The sample study (``mrdiff sample-data``: 8 slices of 8-coil 128x128 k-space, 4x) is
reconstructed three ways with the same options:

- ``core``: :meth:`ReconEngine.reconstruct_volume` in this process (torch threads = the CPUs of
  one actor), nothing else;
- ``pipeline, N actor(s)``: the study is uploaded to the stack's raw bucket, a job is created
  and the ``process-job`` flow runs it against the stack's Prefect server, S3 and Ray cluster
  (download, validation, fan-out to N Ray actors, HDF5/NIfTI/PNG/report writing, staged
  publish, job-record progress, Prefect artifacts), with the worker pool started (models
  loaded) once beforehand, as a long-running service keeps it.

Each pipeline run is a new job (the seed changes, so the processing key does), timed from job
creation to ``succeeded``. Pipeline overhead (the issue's measure, one actor) is
(pipeline wall time - sum of per-slice compute) / sum of per-slice compute, from the record.
``--slices N`` runs on the study's first N slices (a shorter run on a slow machine).

The study goes into the raw bucket's uploads folder (``<tenant>/uploads/``), like an API
upload: its jobs are created here, so the stack's scheduled ``ingest`` leaves it alone instead
of starting a job of its own with the default options beside the measurement.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.bench.json_rows import JsonOption, prepare_json_target, write_json_rows
from services.storage.keys import API_UPLOADS_SEGMENT

if TYPE_CHECKING:  # the CLI imports this module; prefect and the S3 client load when it runs
    from pipelines.options import JobOptions
    from services.settings import Settings
    from services.storage.storage import Storage

BENCH_TENANT = "bench"


@dataclass(frozen=True)
class PipelineBenchRow:
    """One configuration's throughput."""

    name: str
    actors: int
    slices: int
    wall_seconds: float
    compute_seconds: float
    pool_start_seconds: float

    @property
    def slices_per_minute(self) -> float:
        return 60.0 * self.slices / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def overhead_fraction(self) -> float:
        """(wall - compute) / compute; the issue's overhead measure (meaningful for 1 actor)."""
        return (self.wall_seconds - self.compute_seconds) / self.compute_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "actors": self.actors,
            "slices": self.slices,
            "wall_seconds": round(self.wall_seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "pool_start_seconds": round(self.pool_start_seconds, 3),
            "slices_per_minute": round(self.slices_per_minute, 2),
            "overhead_fraction": round(self.overhead_fraction, 4),
        }


def bench_core(h5: Path, options: JobOptions, threads: int, repeats: int) -> PipelineBenchRow:
    """The reconstruction core alone, in this process, on the study's slices."""
    from services.recon.engine import ReconEngine
    from services.recon.errors import InputError
    from services.recon.io import KspaceVolume, read_input

    volume = read_input(h5)
    if not isinstance(volume, KspaceVolume):
        raise InputError(f"{h5.name}: the pipeline benchmark needs a k-space study")
    engine = ReconEngine(threads=threads)
    recon = options.recon_options()
    if recon.method == "diffusion":
        engine.model_versions()  # load the prior before timing, like a warm worker
    slices = 0
    compute = 0.0
    started = time.perf_counter()
    for repeat in range(repeats):
        result = engine.reconstruct_volume(volume, replace(recon, seed=recon.seed + 1000 * repeat))
        slices += result.reconstruction.shape[0]
        compute += float(result.attrs["seconds"])
    return PipelineBenchRow(
        "core (one process)", 0, slices, time.perf_counter() - started, compute, 0.0
    )


def bench_pipeline(
    storage: Storage,
    settings: Settings,
    h5: Path,
    options: JobOptions,
    actors: int,
    repeats: int,
    on_job: Callable[[str], None] | None = None,
) -> PipelineBenchRow:
    """Jobs through the ``process-job`` flow on a warm pool of ``actors`` Ray actors."""
    from pipelines.jobs import create_job
    from pipelines.process_job import process_job
    from pipelines.workers import JobActor, lend_pool
    from services.workers import WorkerPool, connect_ray

    connect_ray(settings)
    storage.ensure_buckets()
    run = secrets.token_hex(4)
    key = storage.put_raw(BENCH_TENANT, f"{API_UPLOADS_SEGMENT}/pipeline-{run}/{h5.name}", path=h5)
    pool = WorkerPool(
        n_actors=actors,
        cpus_per_actor=settings.cpus_per_actor,
        actor_class=JobActor,
        prior_path=settings.prior_path,
        preload_models=options.method == "diffusion",
    )
    clock = time.perf_counter()
    pool.start()
    pool_start = time.perf_counter() - clock
    slices = 0
    compute = 0.0
    wall = 0.0
    try:
        with lend_pool(pool):
            for repeat in range(repeats):
                job_options = options.merged({"seed": options.seed + 1000 * repeat + actors})
                clock = time.perf_counter()
                record = create_job(
                    storage, BENCH_TENANT, [key], job_options, settings=settings
                ).record
                process_job(tenant=BENCH_TENANT, job_id=record.job_id, return_state=True)
                wall += time.perf_counter() - clock
                done = storage.jobs.get(BENCH_TENANT, record.job_id)
                if done.state.value != "succeeded":
                    raise RuntimeError(f"bench job {done.job_id} {done.state.value}: {done.error}")
                slices += done.progress_total
                compute += float(done.timings.get("compute_seconds", 0.0))
                if on_job is not None:
                    on_job(done.job_id)
    finally:
        pool.shutdown()
    name = f"pipeline, {actors} actor{'s' if actors > 1 else ''}"
    return PipelineBenchRow(name, actors, slices, wall, compute, pool_start)


def first_slices(h5: Path, slices: int, folder: Path) -> Path:
    """A copy of the k-space study ``h5`` with only its first ``slices`` slices."""
    from services.recon.errors import InputError
    from services.recon.io import KspaceVolume, read_input, write_kspace_h5

    volume = read_input(h5)
    if not isinstance(volume, KspaceVolume):
        raise InputError(f"{h5.name}: the pipeline benchmark needs a k-space study")
    if not 1 <= slices <= volume.kspace.shape[0]:
        raise InputError(f"--slices must be 1..{volume.kspace.shape[0]}, got {slices}")
    part = replace(volume, kspace=volume.kspace[:slices].copy(), mask=volume.mask[:slices].copy())
    folder.mkdir(parents=True, exist_ok=True)
    return write_kspace_h5(folder / f"{h5.stem}-first{slices}{h5.suffix}", part)


def run_bench(
    storage: Storage,
    settings: Settings,
    h5: Path,
    options: JobOptions,
    actor_counts: Sequence[int],
    repeats: int,
    on_job: Callable[[str], None] | None = None,
) -> list[PipelineBenchRow]:
    """The core, then the pipeline with each actor count."""
    rows = [bench_core(h5, options, settings.cpus_per_actor, repeats)]
    for actors in actor_counts:
        rows.append(bench_pipeline(storage, settings, h5, options, actors, repeats, on_job))
    return rows


def pipeline_command(
    method: Annotated[
        str | None, typer.Option(help="method (default: diffusion if installed, else zero-filled)")
    ] = None,
    actors: Annotated[str, typer.Option(help="comma-separated actor counts")] = "1,2",
    repeats: Annotated[int, typer.Option(help="jobs per configuration")] = 2,
    slices: Annotated[
        int | None, typer.Option(help="use the sample study's first N slices (default all)")
    ] = None,
    json_out: JsonOption = None,
) -> None:
    """Slices/min through the whole pipeline (1 and 2 Ray actors) vs the core in one process."""

    from rich.console import Console
    from rich.table import Table

    from pipelines.models import prior_path
    from pipelines.options import JobOptions
    from services.commands.stack import ensure_stack
    from services.stack import demo as demo_flow
    from services.storage.storage import Storage

    prepare_json_target(json_out)
    stack = ensure_stack()
    settings = stack.client_settings()
    storage = Storage.from_settings(settings)
    if method is None:
        method = "diffusion" if prior_path(settings.prior_path).exists() else "zero-filled"
    options = JobOptions.parse({"method": method}, "--method")
    h5, _ = demo_flow.sample_data(settings.data_dir / "sample", print)
    if slices is not None:
        h5 = first_slices(h5, slices, settings.data_dir / "bench")
    counts = [int(item) for item in actors.split(",") if item.strip()]
    rows = run_bench(
        storage, settings, h5, options, counts, repeats, on_job=lambda job: print(f"job {job} done")
    )
    study = "sample study" if slices is None else f"sample study, first {slices} slice(s)"
    table = Table(
        title=f"mrdiff bench pipeline: {study}, method {method}, {repeats} job(s)"
        " per row (research use only, not for diagnosis)"
    )
    for column in (
        "configuration",
        "slices",
        "wall s",
        "compute s",
        "slices/min",
        "overhead",
        "pool start s",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.name,
            str(row.slices),
            f"{row.wall_seconds:.1f}",
            f"{row.compute_seconds:.1f}",
            f"{row.slices_per_minute:.1f}",
            # the measure; with several actors compute overlaps, so it is not
            f"{100 * row.overhead_fraction:.1f} %" if row.actors == 1 else "-",
            f"{row.pool_start_seconds:.1f}",
        )
    Console(width=140).print(table)
    write_json_rows(json_out, (row.as_dict() for row in rows))


def register_bench(bench_app: typer.Typer) -> None:
    """Add `mrdiff bench pipeline` to the lead's bench group."""
    bench_app.command("pipeline")(pipeline_command)
