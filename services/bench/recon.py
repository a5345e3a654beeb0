"""`mrdiff bench recon`: every method on the same simulated acquisitions of held-out slices.

Protocol (design.md): single-coil k-space is simulated from each reference magnitude slice with
a smooth random phase and noise at a stated SNR, then undersampled; CS lambdas are chosen on the
validation split from a log grid, never on evaluation; metrics follow fastMRI (PSNR, SSIM, NMSE)
plus PSNR inside the head; uncertainty quality is pooled over the foreground of the whole split.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from services.recon import metrics, physics
from services.recon.baselines import LAMBDA_GRID
from services.recon.data.splits import EvalSlice, load_split
from services.recon.engine import ReconEngine, ReconOptions
from services.recon.masks import make_mask

SNR = 40.0
CENTER_FRACTION = 0.08
CS_METHODS = ("cs-l1", "cs-tv")
CS_ITERATIONS = 200
LAMBDA_FILE = Path(__file__).resolve().parents[1] / "recon" / "weights" / "cs_lambdas.json"


class Acquisition(NamedTuple):
    """One simulated, undersampled single-coil slice and its reference."""

    slice: EvalSlice
    kspace: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Setting:
    """A mask kind and acceleration, the rows of the benchmark table."""

    mask: str
    accel: float

    @property
    def key(self) -> str:
        return f"{self.mask}-{self.accel:g}x"


@dataclass
class MethodScores:
    """Per-slice metrics of one method in one setting, plus pooled uncertainty data."""

    psnr: list[float] = field(default_factory=list)
    psnr_head: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    nmse: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    real_scan: list[bool] = field(default_factory=list)
    std_head: list[np.ndarray] = field(default_factory=list)
    error_head: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        reference: np.ndarray,
        seconds: float,
        real: bool,
        result_image: np.ndarray,
        variance: np.ndarray | None,
    ) -> None:
        head = metrics.foreground_mask(reference)
        self.psnr.append(metrics.psnr(reference, result_image))
        self.psnr_head.append(metrics.psnr_in_mask(reference, result_image, head))
        self.ssim.append(metrics.ssim(reference, result_image))
        self.nmse.append(metrics.nmse(reference, result_image))
        self.seconds.append(seconds)
        self.real_scan.append(real)
        if variance is not None:
            self.std_head.append(np.sqrt(np.maximum(variance, 0))[head])
            self.error_head.append(np.abs(result_image - reference)[head])

    def summary(self, real_only: bool = False) -> dict[str, float]:
        keep = np.array(self.real_scan) if real_only else np.ones(len(self.psnr), dtype=bool)
        if not keep.any():
            return {}
        row = {
            "slices": float(keep.sum()),
            "psnr": float(np.mean(np.array(self.psnr)[keep])),
            "psnr_head": float(np.mean(np.array(self.psnr_head)[keep])),
            "ssim": float(np.mean(np.array(self.ssim)[keep])),
            "nmse": float(np.mean(np.array(self.nmse)[keep])),
            "seconds": float(np.mean(np.array(self.seconds)[keep])),
        }
        if self.std_head:
            chosen = [i for i, k in enumerate(keep) if k]
            std = np.concatenate([self.std_head[i] for i in chosen])
            error = np.concatenate([self.error_head[i] for i in chosen])
            row["spearman_head"] = metrics.spearman(std, error)
            row["ause_head"] = metrics.ause(std, error)
            row["within_2std"] = metrics.calibration_fraction(error, std, k=2.0)
        return row


def spread(slices: Sequence[EvalSlice], count: int) -> list[EvalSlice]:
    """``count`` slices taken evenly across the split, so every source volume is represented."""
    stride = max(1, len(slices) // max(count, 1))
    return list(slices[::stride][:count])


def simulate(slices: Sequence[EvalSlice], setting: Setting, seed: int = 0) -> list[Acquisition]:
    """Simulated single-coil acquisitions, one mask and noise draw per slice (seeded)."""
    acquisitions = []
    for index, item in enumerate(slices):
        kspace = physics.simulate_kspace(item.image, snr=SNR, seed=seed + index)
        mask = make_mask(
            setting.mask, item.image.shape, setting.accel, CENTER_FRACTION, seed + index
        )
        acquisitions.append(Acquisition(item, (kspace * mask).astype(np.complex64), mask))
    return acquisitions


def run_method(
    engine: ReconEngine,
    acquisitions: Iterable[Acquisition],
    options: ReconOptions,
    on_slice: Callable[[], None] | None = None,
) -> MethodScores:
    """Reconstruct every acquisition with ``options`` and score it against its reference."""
    scores = MethodScores()
    for index, acq in enumerate(acquisitions):
        result = engine.reconstruct_slice(
            acq.kspace[None], acq.mask, False, ReconOptions(**{**options.__dict__, "seed": index})
        )
        scores.add(
            acq.slice.image,
            result.seconds,
            acq.slice.is_real_scan,
            result.reconstruction,
            result.variance,
        )
        if on_slice is not None:
            on_slice()
    return scores


def tune_cs_lambdas(
    engine: ReconEngine,
    settings: Sequence[Setting],
    max_slices: int,
    on_slice: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Pick each CS method's lambda per setting by mean PSNR on the validation split."""
    validation = spread(load_split("validation"), max_slices)
    chosen: dict[str, dict[str, float]] = {}
    for setting in settings:
        acquisitions = simulate(validation, setting, seed=10_000)
        for method in CS_METHODS:
            psnr_by_lambda = {
                lam: float(
                    np.mean(
                        run_method(
                            engine,
                            acquisitions,
                            ReconOptions(method=method, lam=lam, cs_iterations=CS_ITERATIONS),
                            on_slice,
                        ).psnr
                    )
                )
                for lam in LAMBDA_GRID
            }
            chosen.setdefault(method, {})[setting.key] = max(
                psnr_by_lambda, key=psnr_by_lambda.__getitem__
            )
    return chosen


def load_lambdas(path: Path = LAMBDA_FILE) -> dict[str, dict[str, float]]:
    """CS lambdas chosen on validation by an earlier `mrdiff bench tune-cs`."""
    if not path.exists():
        return {}
    data: dict[str, dict[str, float]] = json.loads(path.read_text())["lambdas"]
    return data


def save_lambdas(lambdas: dict[str, dict[str, float]], path: Path = LAMBDA_FILE) -> None:
    payload = {
        "chosen_on": "validation split (services/recon/data/splits.py), mean PSNR",
        "grid": list(LAMBDA_GRID),
        "snr": SNR,
        "cs_iterations": CS_ITERATIONS,
        "lambdas": lambdas,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


WARM_START_FROM_CS = 200
"""Diffusion step a CS-TV warm start is noised to: lower than from zero-filled (400), since the
estimate is closer to the image; picked on the validation split (BENCHMARKS.md)."""
DIFFUSION_VARIANTS: dict[str, ReconOptions] = {
    "diffusion": ReconOptions(method="diffusion"),
    "diffusion-warm": ReconOptions(method="diffusion", warm_start=400),
    "diffusion-full": ReconOptions(method="diffusion", full_schedule=True),
    "diffusion-eta0": ReconOptions(method="diffusion", eta=0.0),
    "diffusion-noise-aware": ReconOptions(method="diffusion", noise_std=None),
    "diffusion-warm-tv": ReconOptions(
        method="diffusion", warm_start=WARM_START_FROM_CS, warm_start_from="cs-tv"
    ),
}
"""Named diffusion configurations; ``diffusion-warm-tv`` starts from CS-TV (validation lambda),
``diffusion-eta0`` takes deterministic DDIM coarse steps (the samples differ by their start),
``diffusion-noise-aware`` estimates the measurement noise and lets the prior remove it (DDNM+)."""
DEFAULT_SETTINGS = (
    Setting("random1d", 4.0),
    Setting("random1d", 8.0),
    Setting("poisson2d", 4.0),
    Setting("poisson2d", 8.0),
)


class BenchRow(NamedTuple):
    """One printed row: a method in a setting on a subset of the evaluation split."""

    setting: str
    method: str
    subset: str
    values: dict[str, float]


def method_options(
    name: str, setting: Setting, lambdas: dict[str, dict[str, float]]
) -> ReconOptions:
    """Options for a named method; CS gets the lambda chosen on validation for this setting."""
    if name in DIFFUSION_VARIANTS:
        options = DIFFUSION_VARIANTS[name]
        if options.warm_start is not None and options.warm_start_from in CS_METHODS:
            lam = lambdas.get(options.warm_start_from, {}).get(setting.key)
            return replace(options, lam=lam, cs_iterations=CS_ITERATIONS)
        return options
    if name in CS_METHODS:
        lam = lambdas.get(name, {}).get(setting.key)
        return ReconOptions(method=name, lam=lam, cs_iterations=CS_ITERATIONS)
    return ReconOptions(method=name)


def with_overrides(
    options: ReconOptions,
    warm_start: int | None = None,
    steps: int | None = None,
    start_step: int | None = None,
    samples: int | None = None,
    consistency: str | None = None,
) -> ReconOptions:
    """``options`` with the validation knobs of :func:`bench_recon` applied where they apply."""
    if options.method != "diffusion":
        return options
    if warm_start is not None and options.warm_start is not None:
        options = replace(options, warm_start=warm_start)
    if steps is not None and not options.full_schedule:
        options = replace(options, steps=steps)
    if start_step is not None:
        options = replace(options, start_step=start_step)
    if samples is not None:
        options = replace(options, samples=samples)
    if consistency is not None:
        options = replace(options, consistency=consistency)
    return options


def bench_recon(
    engine: ReconEngine,
    methods: Sequence[str],
    settings: Sequence[Setting] = DEFAULT_SETTINGS,
    max_slices: int | None = None,
    full_schedule_slices: int = 4,
    on_slice: Callable[[], None] | None = None,
    split: Literal["validation", "evaluation"] = "evaluation",
    warm_start: int | None = None,
    steps: int | None = None,
    start_step: int | None = None,
    samples: int | None = None,
    consistency: str | None = None,
) -> list[BenchRow]:
    """Score ``methods`` on a split in every setting, overall and real scans only.

    ``split="validation"`` is for choosing settings (``warm_start`` overrides the warm-start
    step of the warm variants, ``steps`` the coarse steps of the respaced variants,
    ``start_step`` the cold-start timestep, ``samples`` the number of samples and ``consistency``
    the data-consistency mode of every diffusion variant); reported
    numbers come from the evaluation split.
    """
    evaluation = load_split(split)
    if max_slices is not None:
        evaluation = spread(evaluation, max_slices)
    lambdas = load_lambdas()
    rows: list[BenchRow] = []
    for setting in settings:
        acquisitions = simulate(evaluation, setting, seed=0)
        for name in methods:
            subset = (
                acquisitions[:full_schedule_slices] if name == "diffusion-full" else acquisitions
            )
            options = with_overrides(
                method_options(name, setting, lambdas),
                warm_start,
                steps,
                start_step,
                samples,
                consistency,
            )
            scores = run_method(engine, subset, options, on_slice)
            rows.append(BenchRow(setting.key, name, "all", scores.summary()))
            if any(scores.real_scan) and not all(scores.real_scan):
                rows.append(BenchRow(setting.key, name, "real", scores.summary(real_only=True)))
    return rows
