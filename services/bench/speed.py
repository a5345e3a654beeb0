"""`mrdiff bench speed`: seconds per slice of the diffusion sampler at the sizes a site meets.

Protocol. Axial slices of the MNI152 template (the demo's source, :mod:`sample_data`) are turned
into fully sampled k-space with noise (SNR 40) and undersampled with a 1-D random 4x mask, then
reconstructed with the shipped prior at default options (8 samples, 50 coarse + 20 refinement
steps; Peng et al., MICCAI 2022) in four cases:

- ``128 single-coil``: the design's working size (2 mm pixels);
- ``128 single-coil, full schedule``: the same N and data consistency on all T steps, for the
  coarse-to-fine speed-up (optional: about 18x slower);
- ``256 single-coil``: 1 mm pixels; the fully convolutional UNet runs at 4x the pixels;
- ``128 8-coil``: birdcage coils, ESPIRiT maps from the calibration region and SENSE data
  consistency (map estimation included in the time).

Times are wall seconds of :meth:`ReconEngine.reconstruct_slice` per slice, with the prior loaded
beforehand; peak RSS is that of this process. Image quality is not scored here (the templates
are training data); ``mrdiff bench recon`` scores quality on the evaluation split.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.bench.recon import peak_rss_mb
from services.recon.coils import birdcage_maps
from services.recon.data.sample_data import CENTER_FRACTION, SNR, template_slices
from services.recon.engine import ReconEngine, ReconOptions
from services.recon.masks import make_mask
from services.recon.physics import simulate_kspace

SPEED_ACCELERATION = 4.0
SPEED_COILS = 8


@dataclass(frozen=True)
class SpeedCase:
    """One timed configuration."""

    name: str
    size: int
    pixel_mm: float
    coils: int
    full_schedule: bool = False


SPEED_CASES = (
    SpeedCase("128 single-coil", 128, 2.0, 1),
    SpeedCase("128 single-coil, full schedule", 128, 2.0, 1, full_schedule=True),
    SpeedCase("256 single-coil", 256, 1.0, 1),
    SpeedCase("128 8-coil", 128, 2.0, SPEED_COILS),
)


@dataclass(frozen=True)
class SpeedRow:
    """Seconds per slice of one case."""

    case: SpeedCase
    seconds: tuple[float, ...]
    peak_rss_mb: float

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def case_inputs(case: SpeedCase, slices: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(k-space (C, H, W), mask (H, W)) for ``slices`` template slices of ``case``."""
    images = template_slices(size=case.size, pixel_mm=case.pixel_mm)
    picks = np.linspace(0, len(images) - 1, slices).round().astype(int)
    maps = birdcage_maps(case.coils, (case.size, case.size)) if case.coils > 1 else None
    mask = make_mask("random1d", (case.size, case.size), SPEED_ACCELERATION, CENTER_FRACTION, seed)
    inputs = []
    for index in picks:
        kspace = simulate_kspace(images[index], SNR, seed + int(index), maps)
        kspace = kspace if maps is not None else kspace[None]
        inputs.append((kspace.astype(np.complex64), mask))
    return inputs


def bench_speed(
    engine: ReconEngine,
    cases: Sequence[SpeedCase],
    slices: int,
    options: ReconOptions = ReconOptions(),
    on_slice: Callable[[], None] | None = None,
) -> list[SpeedRow]:
    """Time ``slices`` reconstructions of every case with ``options`` (diffusion defaults)."""
    _ = engine.prior  # load the weights before any clock starts
    rows = []
    for case in cases:
        case_options = replace(options, full_schedule=case.full_schedule)
        seconds = []
        for kspace, mask in case_inputs(case, slices):
            result = engine.reconstruct_slice(
                kspace,
                mask,
                case.coils > 1,
                case_options,
                pixel_size_mm=(case.pixel_mm, case.pixel_mm),
            )
            seconds.append(result.seconds)
            if on_slice is not None:
                on_slice()
        rows.append(SpeedRow(case, tuple(seconds), peak_rss_mb()))
    return rows
