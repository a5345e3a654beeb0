"""`mrdiff train prior|export` and `mrdiff sample-prior`: train, ship and look at the prior."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from services.commands.recon import progress_bar
from services.recon.errors import InputError
from services.recon.io.png import write_png
from services.recon.sampler import UNCONDITIONAL_START_STEP
from services.recon.training import (
    BankSelection,
    StepLog,
    export_weights,
    latest_checkpoint,
    stop_on_signals,
    train_prior,
)

train_app = typer.Typer(
    help="Train the diffusion prior and export its weights. Research use only, not for diagnosis.",
    no_args_is_help=True,
)


PixelSizesOption = Annotated[
    list[float] | None,
    typer.Option(help="train only on the bank's slices at this pixel size (repeatable)"),
]
GeometryOption = Annotated[
    str,
    typer.Option(
        help="augmentation: dihedral (all flips and quarter turns) or mirror "
        "(left-right only; keeps scans upright)"
    ),
]


def parse_seeds(spec: str) -> list[int]:
    """``"0-15"`` -> 0..15, ``"1,4,9"`` -> [1, 4, 9]; ranges and lists may be mixed."""
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        matched = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if matched is None:
            raise InputError(f"cannot read seeds {spec!r}; use e.g. 0-15 or 1,4,9")
        low = int(matched.group(1))
        high = int(matched.group(2)) if matched.group(2) is not None else low
        if high < low:
            raise InputError(f"seed range {part!r} runs backwards")
        seeds.extend(range(low, high + 1))
    return seeds


@train_app.command("prior")
def train_prior_command(
    bank: Annotated[Path, typer.Option(help="slice bank folder (mrdiff data bank)")],
    run: Annotated[Path, typer.Option(help="run folder: checkpoints and loss.csv")],
    steps: Annotated[int, typer.Option(help="total optimisation steps of the run")],
    batch: Annotated[int, typer.Option(help="images per step")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 2e-4,
    ema: Annotated[float, typer.Option(help="EMA decay of the exported weights")] = 0.999,
    seed: Annotated[int, typer.Option(help="seed of data order, timesteps and noise")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default $MRDIFF_TORCH_THREADS or all cores)")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 250,
    workers: Annotated[int, typer.Option(help="data-loading worker processes (0 or 1)")] = 0,
    init_from: Annotated[
        Path | None,
        typer.Option(help="start a new run from these exported weights (fine-tuning)"),
    ] = None,
    snr_weight_cap: Annotated[
        float,
        typer.Option(
            help="cap of the truncated-SNR loss weight max(1, 1/SNR) (Salimans & Ho 2022); "
            "1 = the simple loss"
        ),
    ] = 1.0,
    pixel_mm: PixelSizesOption = None,
    geometry: GeometryOption = "dihedral",
    zero_phase: Annotated[
        bool,
        typer.Option(help="train on the bank's magnitudes with zero phase (a magnitude prior)"),
    ] = False,
    attention: Annotated[
        bool,
        typer.Option(
            help="a new run gets a self-attention block at the coarsest scale; with "
            "--init-from it is added to those weights at zero (same function at the start)"
        ),
    ] = False,
) -> None:
    """Train the prior, resuming from the run's latest checkpoint if there is one.

    With --init-from a new run starts from an exported prior (e.g. the shipped
    services/recon/weights/prior.pt): its EMA weights, architecture and schedule, a fresh
    optimiser at step 0; use a lower --lr (e.g. 5e-5) to fine-tune. Ctrl-C or SIGTERM
    checkpoints the step in progress and stops; run it again to go on.
    """
    previous = latest_checkpoint(run)
    if previous is not None:
        typer.echo(f"resuming from {previous}")
    elif init_from is not None:
        typer.echo(f"new run fine-tuned from {init_from}")
    with (
        stop_on_signals(),
        progress_bar("loss {task.fields[loss]}", "{task.fields[rate]}") as bar,
    ):
        task = bar.add_task("training prior", total=steps, loss="-", rate="")

        def show(entry: StepLog) -> None:
            bar.update(
                task,
                completed=entry.step,
                loss=f"{entry.loss:.4f}",
                rate=f"{entry.seconds:.2f} s/step",
            )

        result = train_prior(
            bank,
            run,
            steps,
            batch=batch,
            lr=lr,
            ema=ema,
            seed=seed,
            threads=threads,
            checkpoint_every=checkpoint_every,
            workers=workers,
            on_step=show,
            init_from=init_from,
            snr_weight_cap=snr_weight_cap,
            selection=BankSelection.from_options(pixel_mm, geometry, zero_phase),
            attention=attention,
        )
    speed = f", {result.seconds_per_step:.2f} s/step" if result.seconds_per_step else ""
    typer.echo(f"run {run} at step {result.step}/{steps}{speed}; checkpoint {result.checkpoint}")


@train_app.command("export")
def export_command(
    run: Annotated[Path, typer.Option(help="run folder to export from")],
    out: Annotated[Path, typer.Option(help="weights file to write")] = Path(
        "services/recon/weights/prior.pt"
    ),
    name: Annotated[str | None, typer.Option(help="model name stored in the file")] = None,
) -> None:
    """Write the EMA weights of the run's latest checkpoint (with a .sha256 beside it)."""
    exported = export_weights(run, out, name=name)
    typer.echo(
        f"wrote {exported.path} (step {exported.step}, {exported.size_bytes / 1e6:.1f} MB, "
        f"sha256 {exported.sha256})"
    )
    if exported.init_sha256 is not None:
        typer.echo(f"fine-tuned from weights with sha256 {exported.init_sha256}")


def magnitude_grid(images: np.ndarray, columns: int = 4, gap: int = 2) -> np.ndarray:
    """Tile the magnitudes of complex images (S, H, W), each scaled to its 99.5th percentile."""
    count, height, width = images.shape
    rows = -(-count // columns)
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap), np.float32)
    for index, image in enumerate(np.abs(images)):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        grid[top : top + height, left : left + width] = image / max(
            float(np.percentile(image, 99.5)), 1e-12
        )
    return np.clip(grid, 0.0, 1.0)


def sample_prior_command(
    out: Annotated[Path, typer.Option("--out", help="PNG grid to write")],
    seeds: Annotated[str, typer.Option(help="one sample per seed: 0-15 or 1,4,9")] = "0-15",
    weights: Annotated[Path | None, typer.Option(help="prior weights file")] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM eta: 0 deterministic, 1 DDPM-like")] = 1.0,
    start_step: Annotated[
        int, typer.Option(help="timestep sampling starts at, from pure noise")
    ] = UNCONDITIONAL_START_STEP,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Draw unconditional samples from the prior (DDIM) as a magnitude grid PNG."""
    from services.recon.prior import load_prior
    from services.recon.sampler import sample_unconditional

    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    seed_list = parse_seeds(seeds)
    prior = load_prior(weights)
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must be in [0, 1], got {eta}")
    images = sample_unconditional(
        prior, seed_list, steps=steps, shape=(size, size), eta=eta, start_step=start_step
    )
    footer = (
        f"{prior.name}, unconditional DDIM {steps} steps from t={start_step}, eta {eta:g}, "
        f"seeds {seeds}"
    )
    write_png(out, magnitude_grid(images), window=(0.0, 1.0), footer=footer, overwrite=overwrite)
    typer.echo(f"wrote {out} ({len(seed_list)} samples of {prior.name}, {steps} DDIM steps)")


def register(app: typer.Typer) -> None:
    """Add `train prior`, `train export` and `sample-prior`."""
    app.add_typer(train_app, name="train")
    app.command("sample-prior")(sample_prior_command)
