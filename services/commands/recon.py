"""`mrdiff reconstruct` and `mrdiff simulate`: files in, files out, on this machine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from services.recon.engine import (
    ANOMALY_METHODS,
    METHODS,
    WARM_START_SOURCES,
    ReconEngine,
    ReconOptions,
    RetrospectiveOptions,
    retrospective_kspace,
    undersample,
)
from services.recon.errors import InputError
from services.recon.io import (
    ImageVolume,
    KspaceVolume,
    read_input,
    write_kspace_h5,
    write_reconstruction_h5,
)
from services.recon.io.atomic import refuse_existing
from services.recon.masks import MASK_KINDS
from services.recon.sampler import (
    DEFAULT_COARSE_STEPS,
    DEFAULT_REFINE_STEPS,
    VARIANCE_SMOOTHING_PX,
)

log = logging.getLogger("mrdiff")

MaskOption = Annotated[
    str | None,
    typer.Option(help=f"retrospective mask: {', '.join(MASK_KINDS)} (default random1d for images)"),
]
AccelOption = Annotated[float, typer.Option(help="retrospective acceleration")]
CenterOption = Annotated[float, typer.Option(help="fully sampled centre fraction")]
SeedOption = Annotated[int, typer.Option(help="seed for masks, noise and sampling")]
SnrOption = Annotated[
    float, typer.Option(help="SNR of simulated k-space (see physics.simulate_kspace)")
]


def parse_noise_std(text: str) -> float | None:
    """``--noise-std``: "auto" (estimate from k-space corners) or a number >= 0 (input units)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--noise-std must be 'auto' or a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise InputError(f"--noise-std must be 'auto' or a number >= 0, got {text!r}")
    return value


def progress_bar(*fields: str) -> Progress:
    """A progress bar for anything that takes more than a second; ``fields`` are extra text
    columns such as ``"loss {task.fields[loss]}"``."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *fields,
    )


def measured_kspace(
    data: KspaceVolume | ImageVolume, retro: RetrospectiveOptions, mask_given: bool
) -> KspaceVolume:
    """K-space to reconstruct: as measured, retrospectively masked, or simulated from images."""
    if isinstance(data, ImageVolume):
        return retrospective_kspace(data, retro)
    return undersample(data, retro) if mask_given else data


def reconstruct(
    input_path: Annotated[
        Path, typer.Argument(help="fastMRI HDF5, ISMRMRD, DICOM file/folder, NIfTI")
    ],
    out: Annotated[Path, typer.Option("--out", help="output HDF5 file")],
    method: Annotated[str, typer.Option(help=f"one of {', '.join(METHODS)}")] = "diffusion",
    lam: Annotated[float | None, typer.Option(help="CS regularisation (relative)")] = None,
    samples: Annotated[int, typer.Option(help="diffusion samples N")] = 8,
    steps: Annotated[
        int, typer.Option(help="coarse respaced diffusion steps")
    ] = DEFAULT_COARSE_STEPS,
    refine_steps: Annotated[int, typer.Option(help="fine refinement steps")] = DEFAULT_REFINE_STEPS,
    eta: Annotated[
        float, typer.Option(help="coarse-step stochasticity: 1 DDPM-like, 0 deterministic DDIM")
    ] = 1.0,
    warm_start: Annotated[int | None, typer.Option(help="start at this diffusion step")] = None,
    warm_start_from: Annotated[
        str, typer.Option(help=f"warm start estimate: {', '.join(WARM_START_SOURCES)}")
    ] = "zero-filled",
    noise_std: Annotated[
        str,
        typer.Option(
            help="measurement noise std for diffusion data consistency: 0 exact (DiffuseRecon), "
            "'auto' estimated from k-space corners (noise-aware, DDNM+), or a number"
        ),
    ] = "0",
    variance_smoothing: Annotated[
        float,
        typer.Option(help="Gaussian sigma (pixels) pooling the sample variance; 0 = per pixel"),
    ] = VARIANCE_SMOOTHING_PX,
    anomaly: Annotated[
        bool,
        typer.Option(help="also write anomaly_map, healthy, anomaly_mask of the reconstruction"),
    ] = False,
    anomaly_method: Annotated[
        str, typer.Option(help=f"anomaly method: {', '.join(ANOMALY_METHODS)}")
    ] = "guided",
    classifier: Annotated[Path | None, typer.Option(help="anomaly classifier weights file")] = None,
    mask: MaskOption = None,
    accel: AccelOption = 4.0,
    center_fraction: CenterOption = 0.08,
    seed: SeedOption = 0,
    snr: SnrOption = 40.0,
    weights: Annotated[Path | None, typer.Option(help="prior weights file")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Reconstruct undersampled k-space (or retrospectively undersampled images)."""
    refuse_existing(out, overwrite)
    options = ReconOptions(
        method=method,
        samples=samples,
        steps=steps,
        refine_steps=refine_steps,
        eta=eta,
        seed=seed,
        warm_start=warm_start,
        warm_start_from=warm_start_from,
        noise_std=parse_noise_std(noise_std),
        variance_smoothing_px=variance_smoothing,
        lam=lam,
        anomaly=anomaly,
        anomaly_method=anomaly_method,
    ).validated()
    retro = RetrospectiveOptions(mask or "random1d", accel, center_fraction, seed, snr).validated()
    volume = measured_kspace(read_input(input_path), retro, mask is not None)
    engine = ReconEngine(prior_path=weights, classifier_path=classifier)
    with progress_bar() as bar:
        task = bar.add_task(f"{method} reconstruction", total=volume.kspace.shape[0])
        result = engine.reconstruct_volume(
            volume, options, on_slice=lambda done, _: bar.update(task, completed=done)
        )
        maps = None
        if anomaly:
            # Anomaly maps of the reconstruction itself (Wolleb et al. 2022), same output file.
            map_task = bar.add_task("anomaly maps", total=result.reconstruction.shape[0])
            maps = engine.anomaly_volume(
                result.reconstruction,
                options,
                on_slice=lambda done, _: bar.update(map_task, completed=done),
            )
    if result.attrs["warnings"]:
        log.warning("input outside the prior's training range: %s", result.attrs["warnings"])
    attrs = {**volume.attrs, **result.attrs, **(maps.attrs if maps else {})}
    write_reconstruction_h5(
        out,
        result.reconstruction,
        result.mask,
        attrs,
        variance=result.variance,
        extra=maps.datasets if maps else None,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {out} ({result.reconstruction.shape[0]} slices, {attrs['seconds']:.1f} s)")


def simulate(
    input_path: Annotated[Path, typer.Argument(help="image input: DICOM file/folder or NIfTI")],
    out: Annotated[Path, typer.Option("--out", help="output fastMRI-style k-space HDF5")],
    mask: Annotated[str, typer.Option(help=f"one of {', '.join(MASK_KINDS)}")] = "random1d",
    accel: AccelOption = 4.0,
    center_fraction: CenterOption = 0.08,
    seed: SeedOption = 0,
    snr: SnrOption = 40.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Simulate undersampled single-coil k-space from magnitude images (labelled simulated)."""
    refuse_existing(out, overwrite)
    retro = RetrospectiveOptions(mask, accel, center_fraction, seed, snr).validated()
    data = read_input(input_path)
    if not isinstance(data, ImageVolume):
        raise InputError(f"{input_path} already holds k-space; simulate takes images")
    volume = retrospective_kspace(data, retro)
    write_kspace_h5(out, volume, overwrite=overwrite)
    typer.echo(f"wrote {out} (simulated k-space, {volume.kspace.shape[0]} slices, {accel}x {mask})")


def register(app: typer.Typer) -> None:
    """Add the file-to-file commands."""
    app.command()(reconstruct)
    app.command()(simulate)
