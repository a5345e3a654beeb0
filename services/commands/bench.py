"""`mrdiff bench ...`: benchmark scripts that print tables (numbers go to BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from services.bench import denoising as denoising_bench
from services.bench import recon as recon_bench
from services.bench import speed as speed_bench
from services.bench.json_rows import JsonOption, prepare_json_target, write_json_rows
from services.bench.pipeline import register_bench as register_pipeline_bench
from services.commands.recon import progress_bar
from services.recon.engine import ReconEngine, ReconOptions
from services.recon.errors import InputError

bench_app = typer.Typer(
    help="Benchmarks on held-out data; each prints a table.", no_args_is_help=True
)
COLUMNS = (
    "slices",
    "psnr",
    "psnr_head",
    "ssim",
    "nmse",
    "seconds",
    "spearman_head",
    "ause_head",
    "within_2std",
)


def parse_settings(text: str) -> list[recon_bench.Setting]:
    """``random1d:4,poisson2d:8`` -> settings."""
    settings = []
    for item in text.split(","):
        mask, _, accel = item.partition(":")
        try:
            settings.append(recon_bench.Setting(mask.strip(), float(accel)))
        except ValueError as error:
            raise InputError(f"bad setting {item!r}; write MASK:ACCEL, e.g. random1d:4") from error
    return settings


def print_rows(rows: list[recon_bench.BenchRow], title: str) -> None:
    table = Table(title=title)
    for column in ("setting", "method", "subset", *COLUMNS):
        table.add_column(column, justify="right")
    for row in rows:
        cells = [f"{row.values[c]:.4g}" if c in row.values else "-" for c in COLUMNS]
        table.add_row(row.setting, row.method, row.subset, *cells)
    Console(width=200).print(table)


@bench_app.command("tune-cs")
def tune_cs(
    settings: Annotated[
        str, typer.Option(help="MASK:ACCEL list")
    ] = "random1d:4,random1d:8,poisson2d:4,poisson2d:8",
    max_slices: Annotated[int, typer.Option(help="validation slices used")] = 12,
) -> None:
    """Choose CS lambdas on the validation split (log grid, 100 iterations) and store them."""
    chosen_settings = parse_settings(settings)
    engine = ReconEngine()
    runs = (
        len(chosen_settings)
        * len(recon_bench.CS_METHODS)
        * len(recon_bench.LAMBDA_GRID)
        * max_slices
    )
    with progress_bar() as bar:
        task = bar.add_task("CS lambda grid on validation", total=runs)
        lambdas = recon_bench.tune_cs_lambdas(
            engine, chosen_settings, max_slices, lambda: bar.advance(task)
        )
    recon_bench.save_lambdas(lambdas)
    typer.echo(json.dumps(lambdas, indent=2))
    typer.echo(f"stored in {recon_bench.LAMBDA_FILE}")


@bench_app.command("recon")
def bench_recon(
    methods: Annotated[
        str, typer.Option(help="comma-separated methods")
    ] = "zero-filled,cs-l1,cs-tv,diffusion,diffusion-warm,diffusion-full",
    settings: Annotated[
        str, typer.Option(help="MASK:ACCEL list")
    ] = "random1d:4,random1d:8,poisson2d:4,poisson2d:8",
    max_slices: Annotated[
        int | None, typer.Option(help="evaluation slices used (default all)")
    ] = None,
    full_schedule_slices: Annotated[
        int, typer.Option(help="slices for the full-schedule sampler")
    ] = 4,
    split: Annotated[
        str, typer.Option(help="evaluation (report) or validation (choose settings)")
    ] = "evaluation",
    warm_start: Annotated[
        int | None, typer.Option(help="override the warm-start step of the warm variants")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="override the coarse steps of respaced diffusion variants")
    ] = None,
    start_step: Annotated[
        int | None, typer.Option(help="override the cold-start timestep of diffusion variants")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="override the samples of diffusion variants")
    ] = None,
    consistency: Annotated[
        str | None,
        typer.Option(help="override where diffusion variants meet the data: noised or estimate"),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="prior weights (default: the shipped prior)")
    ] = None,
    json_out: JsonOption = None,
) -> None:
    """Reconstruction quality and speed on the evaluation split (lambdas from validation)."""
    if split not in ("evaluation", "validation"):
        raise InputError(f"split must be evaluation or validation, got {split!r}")
    split_name: Literal["validation", "evaluation"] = (
        "validation" if split == "validation" else "evaluation"
    )
    if consistency is not None:
        ReconOptions(consistency=consistency).validated()
    prepare_json_target(json_out)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if any(m in recon_bench.CS_METHODS for m in chosen) and not recon_bench.load_lambdas():
        raise InputError("no CS lambdas chosen yet; run `mrdiff bench tune-cs` first")
    engine = ReconEngine(prior_path=weights)
    with progress_bar() as bar:
        task = bar.add_task(f"{split} split", total=None)
        rows = recon_bench.bench_recon(
            engine,
            chosen,
            parse_settings(settings),
            max_slices,
            full_schedule_slices,
            lambda: bar.advance(task),
            split=split_name,
            warm_start=warm_start,
            steps=steps,
            start_step=start_step,
            samples=samples,
            consistency=consistency,
        )
    print_rows(rows, f"mrdiff bench recon ({split} split, single-coil simulated k-space)")
    typer.echo(f"peak RSS: {recon_bench.peak_rss_mb():.0f} MB")
    write_json_rows(json_out, (row._asdict() for row in rows))


@bench_app.command("speed")
def bench_speed(
    slices: Annotated[int, typer.Option(min=1, help="slices timed per case")] = 3,
    full_schedule: Annotated[
        bool, typer.Option(help="also time the full-schedule sampler (about 18x slower)")
    ] = False,
    samples: Annotated[int, typer.Option(min=1, help="samples per slice")] = 8,
    weights: Annotated[
        Path | None, typer.Option(help="prior weights (default: the shipped prior)")
    ] = None,
) -> None:
    """Seconds per slice of the diffusion sampler: 128 and 256 single-coil, 128 8-coil."""
    import torch

    from services.recon.precision import precision_name

    cases = [c for c in speed_bench.SPEED_CASES if full_schedule or not c.full_schedule]
    engine = ReconEngine(prior_path=weights)
    options = ReconOptions(samples=samples)
    with progress_bar() as bar:
        task = bar.add_task("timing", total=slices * len(cases))
        rows = speed_bench.bench_speed(engine, cases, slices, options, lambda: bar.advance(task))
    table = Table(
        title=f"mrdiff bench speed (diffusion, {samples} samples, "
        f"{options.steps}+{options.refine_steps} steps, "
        f"{torch.get_num_threads()} torch threads, {precision_name(engine.prior.device)})"
    )
    for column in ("case", "slices", "median s/slice", "min s", "max s", "peak RSS MB"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.case.name,
            str(len(row.seconds)),
            f"{row.median_seconds:.1f}",
            f"{min(row.seconds):.1f}",
            f"{max(row.seconds):.1f}",
            f"{row.peak_rss_mb:.0f}",
        )
    Console(width=200).print(table)


@bench_app.command("denoising")
def bench_denoising(
    weights: Annotated[
        list[Path] | None,
        typer.Option(help="prior weights, repeatable (default: the shipped prior)"),
    ] = None,
    slices: Annotated[int, typer.Option(min=1, help="validation slices")] = 24,
    timesteps: Annotated[str, typer.Option(help="comma-separated timesteps")] = ",".join(
        map(str, denoising_bench.DEFAULT_TIMESTEPS)
    ),
) -> None:
    """Clean-image error of the prior's estimate by noise level, on validation slices."""
    from services.recon.prior import load_prior

    try:
        steps = [int(t) for t in timesteps.split(",")]
    except ValueError as error:
        raise InputError(f"bad timesteps {timesteps!r}; write e.g. 400,900,990") from error
    x0 = denoising_bench.validation_images(slices)
    rows = denoising_bench.baseline_rows(x0, steps)
    chosen: list[Path | None] = list(weights) if weights else [None]
    for path in chosen:
        prior = load_prior(path)
        if any(not 0 <= t < prior.schedule.num_timesteps for t in steps):
            raise InputError(f"timesteps must be in [0, {prior.schedule.num_timesteps - 1}]")
        label = f"{prior.name} (step {prior.step}, {prior.sha256[:12]})"
        rows.append(
            denoising_bench.DenoisingRow(label, denoising_bench.denoising_errors(prior, x0, steps))
        )
    table = Table(
        title=f"mrdiff bench denoising (validation, {len(x0)} slices): clean-image MSE by t"
    )
    table.add_column("estimate")
    for t in steps:
        table.add_column(f"t={t}", justify="right")
    for row in rows:
        table.add_row(row.name, *(f"{row.mse_by_t[t]:.4f}" for t in steps))
    Console(width=200).print(table)


register_pipeline_bench(bench_app)  # `mrdiff bench pipeline`


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
