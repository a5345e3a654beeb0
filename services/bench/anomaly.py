"""`mrdiff bench anomaly`: anomaly maps on held-out slices with inserted lesions, and without.

Protocol (issue 4, design.md):

- cases: every slice of a split that can hold a lesion, once lesion-free and once with one
  painted lesion (:mod:`services.recon.data.lesions`). Validation slices get lesions of the
  training family and choose every default; evaluation slices get the held-out family only.
  The validation templates are group averages without acquisition noise, unlike every image a
  site sends (and the real scans of the evaluation split), so validation cases are "acquired":
  the magnitude of simulated fully sampled k-space at the benches' SNR
  (:data:`VALIDATION_ACQUISITION_SNR`, the same noise for the lesion-free and lesion version);
- inputs: the fully sampled magnitude, and (``--recon-slices``) the magnitude of a 4x diffusion
  reconstruction of simulated single-coil k-space of the same image;
- methods: classifier-guided DDIM (``guided``), the same without guidance (``unguided``, its own
  ``L``), global intensity z-score inside the head (``zscore``);
- metrics: pixel AUROC inside the head (design.md foreground of the reference) and over the
  whole image, pooled over lesion slices, the in-head one with a 95% interval from resampling
  the slices (:func:`~services.recon.metrics.pooled_auroc_interval`); Dice of ``anomaly_mask``
  (Otsu) per lesion slice, by lesion size and overall; Dice at the best single threshold for
  the whole set (an oracle bound, never used to choose anything); detection rate by size (at
  least 10% of the lesion inside ``anomaly_mask``); mean map value inside the head on
  lesion-free and on lesion slices (maps of the diffusion methods in units of the input's 99th
  percentile, z-scores in SDs); seconds per slice.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from services.recon import metrics, physics
from services.recon.anomaly import (
    DEFAULTS_FILE,
    REFERENCES,
    AnomalyConfig,
    AnomalyDetector,
    AnomalyResult,
    load_defaults,
    otsu_mask,
)
from services.recon.classifier import LoadedClassifier
from services.recon.data.lesions import (
    FAMILIES,
    HELD_OUT_FAMILY,
    SIZE_BINS,
    TRAINING_FAMILY,
    LesionFamily,
    insert_lesion,
    size_category,
)
from services.recon.data.splits import EvalSlice, load_split
from services.recon.errors import InputError
from services.recon.prior import LoadedPrior

LESION_SEED = {"validation": 50_000, "evaluation": 70_000}
FAMILY = {"validation": TRAINING_FAMILY, "evaluation": HELD_OUT_FAMILY}
DETECTED_FRACTION = 0.10
RECON_ACCELERATION = 4.0
RECON_MASK = "random1d"
RECON_CENTER_FRACTION = 0.08
RECON_SNR = 40.0
VALIDATION_ACQUISITION_SNR = RECON_SNR
L_GRID = (100, 200, 300, 400, 500, 600)
S_GRID = (10.0, 30.0, 100.0, 300.0, 1000.0)
SMOOTHING_GRID = (0.0, 1.0, 2.0, 3.0, 4.0)
SIZES = tuple(name for name, _, _ in SIZE_BINS)


class Case(NamedTuple):
    """One benchmark slice: lesion-free reference, the same with a lesion, masks, size bin."""

    reference: EvalSlice
    healthy_image: np.ndarray
    lesion_image: np.ndarray
    lesion_mask: np.ndarray
    head: np.ndarray
    size: str


def build_cases(
    split: str, max_slices: int | None = None, lesion_family: str | None = None
) -> list[Case]:
    """Cases of ``split`` (deterministic); slices with too little brain are left out.

    Lesions come from the split's own family unless ``lesion_family`` names another one
    (validation templates with held-out-family lesions separate the unseen lesions from the
    unseen scans; nothing is chosen from such a run).
    """
    if split not in FAMILY:
        raise InputError(f"unknown split {split!r}; use validation or evaluation")
    if lesion_family is not None and lesion_family not in FAMILIES:
        raise InputError(
            f"unknown lesion family {lesion_family!r}; use one of {', '.join(FAMILIES)}"
        )
    family: LesionFamily = FAMILIES[lesion_family] if lesion_family else FAMILY[split]
    cases: list[Case] = []
    for index, item in enumerate(load_split(split)):  # type: ignore[arg-type]
        image = np.asarray(item.image, dtype=np.float32)
        seed = LESION_SEED[split] + index
        try:
            lesioned = insert_lesion(image, seed, family)
        except InputError:
            continue
        healthy_image, lesion_image = image, lesioned.image.astype(np.float32)
        if split == "validation":
            healthy_image = acquired(healthy_image, VALIDATION_ACQUISITION_SNR, seed)
            lesion_image = acquired(lesion_image, VALIDATION_ACQUISITION_SNR, seed)
        cases.append(
            Case(
                reference=item,
                healthy_image=healthy_image,
                lesion_image=lesion_image,
                lesion_mask=lesioned.lesion_mask,
                head=metrics.foreground_mask(lesioned.image),
                size=size_category(float(lesioned.lesion_mask.sum()), image.shape),
            )
        )
        if max_slices is not None and len(cases) >= max_slices:
            break
    if not cases:
        raise InputError(f"no {split} slice could hold a lesion")
    return cases


def acquired(image: np.ndarray, snr: float, seed: int) -> np.ndarray:
    """Magnitude of fully sampled single-coil k-space simulated from ``image`` (Rician noise)."""
    kspace = physics.simulate_kspace(image, snr=snr, seed=seed)
    return np.abs(physics.ifft2c(kspace)).astype(np.float32)


def undersampled_reconstruction(
    reconstruct: Callable[[np.ndarray, np.ndarray, int], np.ndarray], image: np.ndarray, seed: int
) -> np.ndarray:
    """Magnitude of a 4x reconstruction of simulated single-coil k-space of ``image``."""
    from services.recon.masks import make_mask

    kspace = physics.simulate_kspace(image, snr=RECON_SNR, seed=seed)
    mask = make_mask(RECON_MASK, image.shape, RECON_ACCELERATION, RECON_CENTER_FRACTION, seed)
    return reconstruct((kspace * mask).astype(np.complex64)[None], mask, seed)


class MethodMaps(NamedTuple):
    """Anomaly results of one method on the lesion and on the lesion-free version of each case."""

    lesion: list[AnomalyResult]
    healthy: list[AnomalyResult]


def run_detector(
    detector: AnomalyDetector,
    images: Sequence[np.ndarray],
    batch: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[AnomalyResult]:
    """Anomaly results of ``images`` in batches of ``batch`` (same-shaped slices)."""
    results: list[AnomalyResult] = []
    for start in range(0, len(images), batch):
        chunk = np.stack(images[start : start + batch])
        results.extend(detector.detect_batch(chunk))
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def map_units(result: AnomalyResult, image: np.ndarray, method: str) -> np.ndarray:
    """Map in comparable units: z-scores as they are, differences over the input's p99."""
    if method == "zscore":
        return result.anomaly_map
    return result.anomaly_map / max(float(np.percentile(image, 99)), 1e-12)


def resmoothed(
    results: list[AnomalyResult],
    raw_maps: list[np.ndarray],
    sigma_px: float,
    heads: list[np.ndarray],
) -> list[AnomalyResult]:
    """Results with maps re-smoothed from raw (unsmoothed) maps (cheap tuning)."""
    out = []
    for result, raw, head in zip(results, raw_maps, heads, strict=True):
        sigma = sigma_px * raw.shape[-1] / 128.0
        smooth = ndimage.gaussian_filter(raw, sigma) if sigma > 0 else raw
        out.append(
            result._replace(
                anomaly_map=smooth.astype(np.float32), anomaly_mask=otsu_mask(smooth, head)
            )
        )
    return out


def best_threshold_dice(
    maps: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    heads: Sequence[np.ndarray],
    candidates: int = 64,
) -> float:
    """Oracle bound: pooled Dice at the single best threshold over the whole set (in the head)."""
    values = np.concatenate([m[h] for m, h in zip(maps, heads, strict=True)])
    labels = np.concatenate([t[h] for t, h in zip(truths, heads, strict=True)])
    if not labels.any():
        return float("nan")
    best = 0.0
    for threshold in np.unique(np.quantile(values, np.linspace(0.5, 0.999, candidates))):
        predicted = values > threshold
        best = max(best, metrics.dice(predicted, labels))
    return best


def score(
    cases: Sequence[Case],
    maps: MethodMaps,
    method: str,
    lesion_inputs: Sequence[np.ndarray],
    healthy_inputs: Sequence[np.ndarray],
) -> dict[str, float]:
    """Every metric of the module docstring for one method on ``cases``."""
    lesion_maps = [map_units(r, x, method) for r, x in zip(maps.lesion, lesion_inputs, strict=True)]
    healthy_maps = [
        map_units(r, x, method) for r, x in zip(maps.healthy, healthy_inputs, strict=True)
    ]
    heads = [c.head for c in cases]
    truths = [c.lesion_mask for c in cases]
    in_head = [m[c.head] for m, c in zip(lesion_maps, cases, strict=True)]
    in_head_truth = [c.lesion_mask[c.head] for c in cases]
    auroc_low, auroc_high = metrics.pooled_auroc_interval(in_head, in_head_truth)
    row: dict[str, float] = {
        "slices": float(len(cases)),
        "auroc_head": metrics.auroc(np.concatenate(in_head), np.concatenate(in_head_truth)),
        "auroc_head_ci95_low": auroc_low,
        "auroc_head_ci95_high": auroc_high,
        "auroc_image": metrics.auroc(
            np.concatenate([m.ravel() for m in lesion_maps]),
            np.concatenate([t.ravel() for t in truths]),
        ),
        "dice_best_oracle": best_threshold_dice(lesion_maps, truths, heads),
        "mean_map_lesion_free": float(
            np.mean([m[c.head].mean() for m, c in zip(healthy_maps, cases, strict=True)])
        ),
        "mean_map_lesion": float(
            np.mean([m[c.head].mean() for m, c in zip(lesion_maps, cases, strict=True)])
        ),
        "seconds": float(np.mean([r.seconds for r in maps.lesion + maps.healthy])),
    }
    row["slice_auroc"] = slice_separation(cases, lesion_maps, healthy_maps)
    dices = np.array(
        [
            metrics.dice(r.anomaly_mask, c.lesion_mask)
            for r, c in zip(maps.lesion, cases, strict=True)
        ]
    )
    detected = np.array(
        [
            (r.anomaly_mask & c.lesion_mask).sum() >= DETECTED_FRACTION * c.lesion_mask.sum()
            for r, c in zip(maps.lesion, cases, strict=True)
        ]
    )
    sizes = np.array([c.size for c in cases])
    row["dice_otsu"] = float(dices.mean())
    row["false_positive_px_lesion_free"] = float(
        np.mean([r.anomaly_mask.sum() for r in maps.healthy])
    )
    for size in SIZES:
        chosen = sizes == size
        row[f"n_{size}"] = float(chosen.sum())
        row[f"dice_otsu_{size}"] = float(dices[chosen].mean()) if chosen.any() else float("nan")
        row[f"detected_{size}"] = float(detected[chosen].mean()) if chosen.any() else float("nan")
    medium_large = np.isin(sizes, ("medium", "large"))
    row["dice_otsu_medium_large"] = (
        float(dices[medium_large].mean()) if medium_large.any() else float("nan")
    )
    return row


@dataclass(frozen=True)
class TuningResult:
    """A method's knobs chosen on validation and the validation score that chose them."""

    config: AnomalyConfig
    auroc_head: float
    dice_otsu: float
    tried: int
    slice_auroc: float | None = None
    """Lesion vs lesion-free slices by in-head mean map, when the tuning counted them."""
    best_by_reference: dict[str, float] = field(default_factory=dict)
    """The best selection score each map reference reached (guided scores two)."""
    best_by_guidance: dict[str, tuple[float, AnomalyConfig]] = field(default_factory=dict)
    """The best selection score and knobs of each guidance target searched (guided only)."""


def selection_score(row: dict[str, float]) -> float:
    """What tuning maximises: in-head pixel AUROC plus mean Otsu Dice (validation lesions), plus
    the slice AUROC of the in-head mean map (lesion vs lesion-free) when the row has it."""
    return row["auroc_head"] + row["dice_otsu"] + row.get("slice_auroc", 0.0)


def slice_separation(
    cases: Sequence[Case], lesion_maps: Sequence[np.ndarray], healthy_maps: Sequence[np.ndarray]
) -> float:
    """AUROC of the in-head mean map (:func:`map_units`) telling each case's lesion slice from
    its lesion-free one."""
    means = [
        m[c.head].mean()
        for m, c in zip([*lesion_maps, *healthy_maps], [*cases, *cases], strict=True)
    ]
    return metrics.auroc(np.array(means), np.array([1] * len(cases) + [0] * len(cases)))


def tune_method(
    prior: LoadedPrior | None,
    classifier: LoadedClassifier | None,
    method: str,
    cases: Sequence[Case],
    base: AnomalyConfig,
    noise_levels: Sequence[int] = L_GRID,
    scales: Sequence[float] = S_GRID,
    smoothings: Sequence[float] = SMOOTHING_GRID,
    batch: int = 8,
    on_batch: Callable[[int], None] | None = None,
    guidances: Sequence[str] = ("slice",),
    lesion_free: bool = False,
) -> TuningResult:
    """Grid search of (guidance target, L, s, reference, smoothing) for ``method`` on validation
    lesion cases; with ``lesion_free`` the lesion-free version of each case is mapped too and
    the score adds how well the in-head mean map tells the two apart (:func:`slice_separation`,
    issue 4's "lesion-free slices clearly lower")."""
    grid: list[tuple[str, int, float]]
    if method == "guided":
        grid = list(itertools.product(guidances, noise_levels, scales))
    elif method == "unguided":
        grid = [(base.guidance, level, 0.0) for level in noise_levels]
    else:
        grid = [(base.guidance, base.noise_level, 0.0)]
    inputs = [c.lesion_image for c in cases]
    if lesion_free:
        inputs += [c.healthy_image for c in cases]
    heads = [c.head for c in cases] * (2 if lesion_free else 1)
    best: tuple[float, AnomalyConfig, dict[str, float]] | None = None
    by_reference: dict[str, float] = {}
    by_guidance: dict[str, tuple[float, AnomalyConfig]] = {}
    tried = 0
    # Guided runs decode without guidance too, so one run scores both references.
    reference = "unguided" if method == "guided" else "input"
    for guidance, level, scale in grid:
        config = replace(
            base,
            method=method,
            noise_level=level,
            scale=scale,
            smoothing_px=0.0,
            reference=reference,
            guidance=guidance,
        )
        results = run_detector(AnomalyDetector(prior, classifier, config), inputs, batch, on_batch)
        raw_maps = {"input": [np.abs(x - r.healthy) for x, r in zip(inputs, results, strict=True)]}
        if reference == "unguided":
            raw_maps["unguided"] = [r.anomaly_map for r in results]
        for (reference_name, raw), smoothing in itertools.product(raw_maps.items(), smoothings):
            smoothed = resmoothed(results, raw, smoothing, heads)
            maps = [map_units(r, x, method) for r, x in zip(smoothed, inputs, strict=True)]
            row = lesion_only_score(cases, smoothed[: len(cases)], maps[: len(cases)])
            if lesion_free:
                row["slice_auroc"] = slice_separation(cases, maps[: len(cases)], maps[len(cases) :])
            tried += 1
            value = selection_score(row)
            by_reference[reference_name] = max(by_reference.get(reference_name, value), value)
            chosen = replace(config, smoothing_px=smoothing, reference=reference_name)
            if method == "guided" and value > by_guidance.get(guidance, (-np.inf,))[0]:
                by_guidance[guidance] = (value, chosen)
            if best is None or value > best[0]:
                best = (value, chosen, row)
    assert best is not None
    auroc, dice = best[2]["auroc_head"], best[2]["dice_otsu"]
    separation = best[2].get("slice_auroc")
    return TuningResult(best[1], auroc, dice, tried, separation, by_reference, by_guidance)


def lesion_only_score(
    cases: Sequence[Case], results: Sequence[AnomalyResult], maps: Sequence[np.ndarray]
) -> dict[str, float]:
    """In-head AUROC of ``maps`` (:func:`map_units`) and mean Otsu Dice on lesion cases (what
    tuning looks at)."""
    values = np.concatenate([m[c.head] for m, c in zip(maps, cases, strict=True)])
    labels = np.concatenate([c.lesion_mask[c.head] for c in cases])
    dices = [
        metrics.dice(r.anomaly_mask, c.lesion_mask) for r, c in zip(results, cases, strict=True)
    ]
    return {"auroc_head": metrics.auroc(values, labels), "dice_otsu": float(np.mean(dices))}


def save_defaults(
    chosen: dict[str, TuningResult],
    prior: LoadedPrior | None,
    classifier: LoadedClassifier | None,
    path: Path = DEFAULTS_FILE,
    grid: dict[str, list[Any]] | None = None,
) -> None:
    """Store the chosen knobs (read by :func:`services.recon.anomaly.default_config`).

    Methods not in ``chosen`` keep what an earlier tuning stored; ``grid`` (L and s values
    searched) is recorded per method.
    """
    searched = {"L": list(L_GRID), "s": list(S_GRID), "guidance": ["slice"], **(grid or {})}
    searched["smoothing_px"] = list(SMOOTHING_GRID)
    methods: dict[str, Any] = dict(load_defaults(path).get("methods", {}))
    for name, result in chosen.items():
        entry: dict[str, Any] = {
            key: value
            for key, value in asdict(result.config).items()
            if key not in ("seed", "bf16")
        }
        entry["grid"] = {
            "L": searched["L"] if name != "zscore" else [],
            "s": searched["s"] if name == "guided" else [0.0],
            "smoothing_px": searched["smoothing_px"],
            "reference": list(REFERENCES) if name == "guided" else ["input"],
        }
        if name == "guided":
            entry["grid"]["guidance"] = searched["guidance"]
        entry["validation_auroc_head"] = round(result.auroc_head, 4)
        entry["validation_dice_otsu"] = round(result.dice_otsu, 4)
        if result.slice_auroc is not None:
            entry["validation_slice_auroc"] = round(result.slice_auroc, 4)
        if len(result.best_by_reference) > 1:
            entry["validation_score_by_reference"] = {
                name: round(value, 4) for name, value in result.best_by_reference.items()
            }
        if name != "zscore" and prior is not None:
            entry["prior_sha256"] = prior.sha256
        if name == "guided" and classifier is not None:
            entry["classifier_sha256"] = classifier.sha256
        by_guidance = _by_guidance(result, methods.get(name, {}), entry)
        if len(by_guidance) > 1:
            entry["validation_by_guidance"] = by_guidance
        methods[name] = entry
    payload: dict[str, Any] = {
        "chosen_on": "validation split with training-family lesions, acquired at SNR "
        f"{VALIDATION_ACQUISITION_SNR:g}; score = in-head pixel AUROC + mean Otsu Dice, plus "
        "the slice AUROC of the in-head mean map (lesion vs lesion-free) for a method whose entry "
        "has validation_slice_auroc (maps in units of the input's 99th percentile)",
        "methods": methods,
        "research_use_only": "research use only, not for diagnosis",
    }
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(path)


def _by_guidance(
    result: TuningResult, previous: dict[str, Any], entry: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each guidance target's best knobs: this run's, plus the targets an earlier tuning of the
    same prior and classifier searched and this run did not (so ``guided:TARGET`` keeps its own
    validation knobs when only some targets are tuned again)."""
    same_models = all(
        previous.get(key) == entry.get(key) for key in ("prior_sha256", "classifier_sha256")
    )
    kept = previous.get("validation_by_guidance", {}) if same_models else {}
    searched = {
        target: {
            "noise_level": config.noise_level,
            "scale": config.scale,
            "smoothing_px": config.smoothing_px,
            "reference": config.reference,
            "validation_score": round(value, 4),
        }
        for target, (value, config) in result.best_by_guidance.items()
    }
    return {**{t: v for t, v in kept.items() if t not in searched}, **searched}


class BenchRow(NamedTuple):
    """One printed row: a method on one input kind and subset of the evaluation split."""

    inputs: str
    method: str
    subset: str
    values: dict[str, float]


def bench_anomaly(
    detectors: dict[str, AnomalyDetector],
    cases: Sequence[Case],
    recon: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    recon_slices: int = 0,
    batch: int = 8,
    on_batch: Callable[[int], None] | None = None,
    by_source: bool = False,
) -> list[BenchRow]:
    """Score every detector on fully sampled cases (and 4x reconstructions of a few of them).

    Rows cover all cases and the real-scan subset (left out when every case is a real scan);
    with ``by_source`` also each source volume of the split on its own.
    """
    rows: list[BenchRow] = []
    variants: list[tuple[str, Sequence[Case], list[np.ndarray], list[np.ndarray]]] = [
        ("fully-sampled", cases, [c.lesion_image for c in cases], [c.healthy_image for c in cases])
    ]
    if recon is not None and recon_slices > 0:
        subset = list(cases[:recon_slices])
        lesion_recons = [
            undersampled_reconstruction(recon, c.lesion_image, i) for i, c in enumerate(subset)
        ]
        healthy_recons = [
            undersampled_reconstruction(recon, c.healthy_image, i) for i, c in enumerate(subset)
        ]
        variants.append(("diffusion-4x", subset, lesion_recons, healthy_recons))
    for inputs, chosen, lesion_inputs, healthy_inputs in variants:
        for method, detector in detectors.items():
            maps = MethodMaps(
                run_detector(detector, lesion_inputs, batch, on_batch),
                run_detector(detector, healthy_inputs, batch, on_batch),
            )
            for subset_name, selected in subsets(chosen, by_source):
                row = score(
                    [chosen[i] for i in selected],
                    MethodMaps(
                        [maps.lesion[i] for i in selected], [maps.healthy[i] for i in selected]
                    ),
                    method,
                    [lesion_inputs[i] for i in selected],
                    [healthy_inputs[i] for i in selected],
                )
                rows.append(BenchRow(inputs, method, subset_name, row))
    return rows


def subsets(cases: Sequence[Case], by_source: bool = False) -> list[tuple[str, list[int]]]:
    """Named index lists of ``cases``: all, real scans and each source volume (``by_source``),
    each only where it is a proper subset."""
    named = [("all", list(range(len(cases))))]
    real = [i for i, c in enumerate(cases) if c.reference.is_real_scan]
    named.append(("real", real))
    if by_source:
        for source in dict.fromkeys(c.reference.source for c in cases):
            named.append((source, [i for i, c in enumerate(cases) if c.reference.source == source]))
    return [named[0], *((name, kept) for name, kept in named[1:] if 0 < len(kept) < len(cases))]
