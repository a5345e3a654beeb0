"""`mrdiff anomaly`; `train classifier|export-classifier`; `bench anomaly|tune-anomaly`.

Anomaly maps after Wolleb et al. (MICCAI 2022); see :mod:`services.recon.anomaly`.
Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import h5py
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from services.bench.json_rows import JsonOption, prepare_json_target, write_json_rows
from services.commands.train import GeometryOption, PixelSizesOption
from services.recon.anomaly import (
    GUIDANCE_TARGETS,
    METHODS,
    RESEARCH_USE_ONLY,
    AnomalyConfig,
    AnomalyDetector,
    AnomalyResult,
    default_config,
    defaults_are_tuned,
    stack_results,
)
from services.recon.classifier_training import DENSE_WEIGHT
from services.recon.errors import InputError
from services.recon.training import BankSelection, StepLog, stop_on_signals

MethodOption = Annotated[str, typer.Option(help=f"one of {', '.join(METHODS)}")]
PriorOption = Annotated[Path | None, typer.Option("--weights", help="prior weights file")]
ClassifierOption = Annotated[Path | None, typer.Option(help="classifier weights file")]


def build_detector(
    method: str,
    weights: Path | None = None,
    classifier: Path | None = None,
    noise_level: int | None = None,
    scale: float | None = None,
    steps: int | None = None,
    smoothing: float | None = None,
    seed: int = 0,
    reference: str | None = None,
    guidance: str | None = None,
) -> AnomalyDetector:
    """A detector with the validation-chosen defaults, overridden where a knob is given."""
    from services.recon.classifier import load_classifier
    from services.recon.prior import load_prior

    config = default_config(method, seed=seed, guidance=guidance)
    overrides: dict[str, Any] = {
        "noise_level": noise_level,
        "scale": scale,
        "steps": steps,
        "smoothing_px": smoothing,
        "reference": reference,
        "guidance": guidance,
    }
    config = AnomalyConfig(
        **{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    )
    prior = load_prior(weights) if method != "zscore" else None
    loaded_classifier = load_classifier(classifier) if method == "guided" else None
    return AnomalyDetector(prior, loaded_classifier, config)


def write_anomaly_h5(
    path: Path, results: list[AnomalyResult], attrs: dict[str, Any], overwrite: bool
) -> None:
    """Write ``anomaly_map``, ``healthy``, ``anomaly_mask`` (S x H x W) and attrs atomically."""
    from services.recon.io.atomic import atomic_output
    from services.recon.io.hdf5_attrs import write_attrs

    with atomic_output(path, overwrite) as temporary, h5py.File(temporary, "w") as h5:
        for name, values in stack_results(results).items():
            h5.create_dataset(name, data=values)
        write_attrs(h5.attrs, {**attrs, "research_use_only": RESEARCH_USE_ONLY})


def anomaly(
    input_path: Annotated[
        Path, typer.Argument(help="magnitude images: reconstruction HDF5, DICOM file/folder, NIfTI")
    ],
    out: Annotated[Path, typer.Option("--out", help="output HDF5 file")],
    method: MethodOption = "guided",
    noise_level: Annotated[
        int | None, typer.Option("--L", help="DDIM encoding depth (default: chosen on validation)")
    ] = None,
    scale: Annotated[
        float | None, typer.Option("--s", help="guidance scale (default: chosen on validation)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps between 0 and L")] = None,
    smoothing: Annotated[float | None, typer.Option(help="Gaussian smoothing (px at 128)")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="guided only: compare the healthy version with the input or with the unguided "
            "decoding (default: chosen on validation)"
        ),
    ] = None,
    guidance: Annotated[
        str | None,
        typer.Option(
            help="guided only: make the slice's pooled logit healthy (slice), every location of "
            "the classifier's evidence map (location), or the slice's logit with its pull "
            "gated by the evidence map at each step (gated) or read once from the input "
            "(gated-input); default: chosen on validation"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed recorded with the output")] = 0,
    weights: PriorOption = None,
    classifier: ClassifierOption = None,
    batch: Annotated[int, typer.Option(help="slices per batch")] = 4,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Anomaly maps of every slice (research use only, not for diagnosis)."""
    from services.recon.io import ImageVolume, read_input

    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    volume = read_input(input_path)
    if not isinstance(volume, ImageVolume):
        raise InputError(
            f"{input_path} holds k-space; reconstruct it first (mrdiff reconstruct --anomaly)"
        )
    detector = build_detector(
        method, weights, classifier, noise_level, scale, steps, smoothing, seed, reference, guidance
    )
    started = time.perf_counter()
    results: list[AnomalyResult] = []
    for start in range(0, volume.images.shape[0], batch):
        results.extend(detector.detect_batch(volume.images[start : start + batch]))
    seconds = time.perf_counter() - started
    attrs: dict[str, Any] = {
        **detector.attributes(),
        "seed": seed,
        "seconds": seconds,
        "source": volume.source,
        "model_versions": json.dumps(detector.model_versions(), sort_keys=True),
        "defaults_tuned_on_validation": defaults_are_tuned(method),
    }
    write_anomaly_h5(out, results, attrs, overwrite)
    typer.echo(f"wrote {out} ({len(results)} slices, {method}, {seconds:.1f} s)")


def train_classifier_command(
    bank: Annotated[Path, typer.Option(help="slice bank folder (mrdiff data build-bank)")],
    run: Annotated[Path, typer.Option(help="run folder: checkpoints and loss.csv")] = Path(
        "runs/classifier"
    ),
    steps: Annotated[int, typer.Option(help="total optimisation steps of the run")] = 4000,
    batch: Annotated[int, typer.Option(help="images per step (pairs: even)")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="seed of slices, lesions, timesteps and noise")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (the prior trains beside)")] = 1,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 200,
    workers: Annotated[int, typer.Option(help="data-loading worker processes (0 or 1)")] = 0,
    crop: Annotated[int, typer.Option(help="training window around each lesion (0: whole)")] = 64,
    dense_weight: Annotated[
        float, typer.Option(help="weight of the evidence-map loss against the slice loss")
    ] = DENSE_WEIGHT,
    pixel_mm: PixelSizesOption = None,
    geometry: GeometryOption = "dihedral",
    init_from: Annotated[
        Path | None,
        typer.Option(help="start a new run from these exported classifier weights (fine-tuning)"),
    ] = None,
    appearance: Annotated[
        float,
        typer.Option(help="fraction of pairs given a random scanner appearance (blur, noise...)"),
    ] = 0.0,
    tissue_blobs: Annotated[
        float,
        typer.Option(help="fraction of pairs given healthy look-alike blobs (brain intensities)"),
    ] = 0.0,
) -> None:
    """Train the noise-aware healthy-vs-lesion classifier, resuming the run if it exists.

    With --init-from a new run starts from exported classifier weights (e.g. the shipped
    services/recon/weights/classifier.pt) with a fresh optimiser at step 0.
    """
    from services.commands.recon import progress_bar
    from services.recon.classifier_training import train_classifier

    with (
        stop_on_signals(),
        progress_bar("loss {task.fields[loss]}") as bar,
    ):
        task = bar.add_task("training classifier", total=steps, loss="-")

        def show(entry: StepLog) -> None:
            bar.update(task, completed=entry.step, loss=f"{entry.loss:.4f}")

        result = train_classifier(
            bank,
            run,
            steps,
            batch=batch,
            lr=lr,
            seed=seed,
            threads=threads,
            checkpoint_every=checkpoint_every,
            workers=workers,
            crop=crop or None,
            on_step=show,
            dense_weight=dense_weight,
            selection=BankSelection.from_options(pixel_mm, geometry),
            init_from=init_from,
            appearance=appearance,
            tissue_blobs=tissue_blobs,
        )
    speed = f", {result.seconds_per_step:.2f} s/step" if result.seconds_per_step else ""
    typer.echo(f"run {run} at step {result.step}/{steps}{speed}; checkpoint {result.checkpoint}")


def export_classifier_command(
    run: Annotated[Path, typer.Option(help="run folder to export from")] = Path("runs/classifier"),
    out: Annotated[Path, typer.Option(help="weights file to write")] = Path(
        "services/recon/weights/classifier.pt"
    ),
    name: Annotated[str | None, typer.Option(help="model name stored in the file")] = None,
    card: Annotated[
        Path | None, typer.Option(help="also write the MODEL_CARD section (accuracy by noise)")
    ] = None,
) -> None:
    """Write the EMA weights of the classifier run (with a .sha256) and optionally its card."""
    from services.recon.classifier_training import export_classifier

    exported = export_classifier(run, out, name=name)
    typer.echo(f"wrote {exported.path} (step {exported.step}, {exported.size_bytes / 1e6:.2f} MB)")
    if card is None:
        return
    text = classifier_card(exported.path)
    card.parent.mkdir(parents=True, exist_ok=True)
    temporary = card.with_name(f".{card.name}.tmp")
    temporary.write_text(text)
    temporary.replace(card)
    typer.echo(text)


def bench_classifier_command(
    weights: Annotated[
        Path | None, typer.Option(help="classifier weights file (default: the shipped one)")
    ] = None,
) -> None:
    """Print the classifier's card table: slice accuracy, AUROC and localisation by noise level
    on validation (training-family lesions) and evaluation (held-out family) slices."""
    from services.recon.classifier import DEFAULT_WEIGHTS

    typer.echo(classifier_card(weights or DEFAULT_WEIGHTS))


def classifier_card(weights: Path) -> str:
    """MODEL_CARD section of a classifier weights file, measured on both labelled sets."""
    from services.recon.classifier import load_classifier
    from services.recon.classifier_training import classifier_card_section, labelled_set
    from services.recon.data.lesions import HELD_OUT_FAMILY, TRAINING_FAMILY
    from services.recon.data.splits import load_split

    loaded = load_classifier(weights)
    sets = {
        "validation": labelled_set(
            [s.image for s in load_split("validation")], TRAINING_FAMILY, seed=50_000
        ),
        "evaluation": labelled_set(
            [s.image for s in load_split("evaluation")], HELD_OUT_FAMILY, seed=70_000
        ),
    }
    details = [
        f"- weights: `{loaded.path.name}`, sha256 `{loaded.sha256}`, "
        f"{loaded.path.stat().st_size / 1e6:.2f} MB, {loaded.step} steps",
        f"- architecture: {loaded.config.to_dict()}",
        "- trained on: slice-bank magnitudes (zero phase, p99 = 1), each slice healthy and with a "
        "training-family lesion, both noised to the same t with the same noise; t = floor(1000 "
        "u^2), u uniform (every level, low noise more often); cosine schedule (T = 1000); loss: "
        "image cross-entropy + class-balanced cross-entropy of the evidence map against the "
        "lesion masks",
        f"- last checkpoint's training options: {loaded.training}",
        "- validation = validation split + training-family lesions; evaluation = evaluation split "
        "+ held-out lesion family (never trained on)",
    ]
    return classifier_card_section(
        loaded.model, loaded.schedule, sets, "Anomaly classifier (noise-aware)", details
    )


def print_rows(rows: list[Any], title: str) -> None:
    """The benchmark table."""
    columns = (
        "slices",
        "auroc_head",
        "auroc_head_ci95",
        "auroc_image",
        "dice_otsu",
        "dice_otsu_medium_large",
        "dice_best_oracle",
        "detected_small",
        "detected_medium",
        "detected_large",
        "mean_map_lesion_free",
        "mean_map_lesion",
        "slice_auroc",
        "seconds",
    )
    table = Table(title=title)
    for column in ("inputs", "method", "subset", *columns):
        table.add_column(column, justify="right")
    for row in rows:
        cells = [_cell(row.values, c) for c in columns]
        table.add_row(row.inputs, row.method, row.subset, *cells)
    Console(width=250).print(table)


def _cell(values: dict[str, float], column: str) -> str:
    """One table cell: the value, or ``low-high`` for an interval column (``*_ci95``)."""
    if column.endswith("_ci95"):
        low, high = values.get(f"{column}_low"), values.get(f"{column}_high")
        return "-" if low is None or high is None else f"{low:.3g}-{high:.3g}"
    return f"{values[column]:.3g}" if column in values else "-"


def tune_anomaly_command(
    methods: Annotated[str, typer.Option(help="methods to tune")] = "guided,unguided,zscore",
    max_slices: Annotated[int | None, typer.Option(help="validation slices (default all)")] = None,
    weights: PriorOption = None,
    classifier: ClassifierOption = None,
    steps: Annotated[int, typer.Option(help="DDIM steps between 0 and L")] = 25,
    batch: Annotated[int, typer.Option(help="slices per batch")] = 8,
    levels: Annotated[
        str | None, typer.Option(help="comma-separated L grid (default: the module's grid)")
    ] = None,
    scales: Annotated[
        str | None, typer.Option(help="comma-separated s grid for guided (default: module's)")
    ] = None,
    guidance: Annotated[
        str,
        typer.Option(
            help="comma-separated guidance targets for guided: slice, location, gated, gated-input"
        ),
    ] = "slice",
    lesion_free: Annotated[
        bool,
        typer.Option(
            "--lesion-free/--lesion-only",
            help="also map each case's lesion-free slice and add the slice AUROC of the in-head "
            "mean map to the score (twice the time)",
        ),
    ] = False,
) -> None:
    """Choose L, s and smoothing on the VALIDATION split (training-family lesions); store them.

    The score is in-head pixel AUROC + mean Otsu Dice on the lesion slices; with --lesion-free
    it adds how well the in-head mean map tells lesion slices from lesion-free ones.
    """
    from services.bench import anomaly as bench
    from services.recon.classifier import load_classifier
    from services.recon.prior import load_prior

    chosen_methods = [m.strip() for m in methods.split(",") if m.strip()]
    cases = bench.build_cases("validation", max_slices)
    prior = load_prior(weights) if set(chosen_methods) - {"zscore"} else None
    loaded = load_classifier(classifier) if "guided" in chosen_methods else None
    level_grid = _grid(levels, bench.L_GRID, int)
    scale_grid = _grid(scales, bench.S_GRID, float)
    guidance_grid = _grid(guidance, GUIDANCE_TARGETS, str)
    unknown = sorted(set(guidance_grid) - set(GUIDANCE_TARGETS))
    if unknown:
        choices = ", ".join(GUIDANCE_TARGETS)
        raise InputError(f"unknown guidance target {unknown[0]!r}; choose {choices}")
    chosen: dict[str, bench.TuningResult] = {}
    for method in chosen_methods:
        base = AnomalyConfig(method=method, steps=steps)
        result = bench.tune_method(
            prior,
            loaded,
            method,
            cases,
            base,
            level_grid,
            scale_grid,
            batch=batch,
            guidances=guidance_grid,
            lesion_free=lesion_free,
        )
        chosen[method] = result
        separation = (
            f", slice AUROC {result.slice_auroc:.3f}" if result.slice_auroc is not None else ""
        )
        typer.echo(
            f"{method}: guidance={result.config.guidance} "
            f"L={result.config.noise_level} s={result.config.scale} "
            f"smoothing={result.config.smoothing_px} (validation AUROC {result.auroc_head:.3f}, "
            f"Dice {result.dice_otsu:.3f}{separation}, {result.tried} settings)"
        )
        if len(result.best_by_reference) > 1:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in result.best_by_reference.items())
            typer.echo(f"  best score by map reference: {scores}")
    searched = {"L": level_grid, "s": scale_grid, "guidance": guidance_grid}
    bench.save_defaults(chosen, prior, loaded, grid=searched)
    typer.echo(f"stored in {bench.DEFAULTS_FILE}")


def _grid(text: str | None, default: tuple[Any, ...], kind: type) -> list[Any]:
    """A comma-separated grid option, or the default grid."""
    if text is None:
        return list(default)
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise InputError(f"bad grid {text!r}: {error}") from error
    if not values:
        raise InputError(f"empty grid {text!r}")
    return values


def bench_anomaly_command(
    methods: Annotated[
        str,
        typer.Option(
            help="methods; guided@input or guided@unguided fixes the guided map's reference, "
            "guided:slice, guided:location or guided:gated its guidance target"
        ),
    ] = "guided,unguided,zscore",
    max_slices: Annotated[int | None, typer.Option(help="slices (default all)")] = None,
    recon_slices: Annotated[
        int, typer.Option(help="slices also mapped from 4x diffusion reconstructions")
    ] = 8,
    weights: PriorOption = None,
    classifier: ClassifierOption = None,
    batch: Annotated[int, typer.Option(help="slices per batch")] = 8,
    json_out: JsonOption = None,
    by_source: Annotated[bool, typer.Option(help="also a row per source volume")] = False,
    split: Annotated[
        str,
        typer.Option(
            help="evaluation (the benchmark) or validation (templates, where the defaults "
            "were chosen: a reference, never a result)"
        ),
    ] = "evaluation",
    lesion_family: Annotated[
        str | None,
        typer.Option(help="training or held-out (default: the split's own family)"),
    ] = None,
) -> None:
    """Anomaly maps on the EVALUATION split with held-out-family lesions and lesion-free slices.

    ``--split validation`` maps the templates the defaults were chosen on, for reference only.
    """
    from services.bench import anomaly as bench

    prepare_json_target(json_out)
    chosen_methods = [m.strip() for m in methods.split(",") if m.strip()]
    cases = bench.build_cases(split, max_slices, lesion_family)
    detectors = {m: _bench_detector(m, weights, classifier) for m in chosen_methods}
    recon = None
    if recon_slices > 0:
        from services.recon.engine import ReconEngine, ReconOptions

        engine = ReconEngine(prior_path=weights)

        def recon(kspace: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
            options = ReconOptions(method="diffusion", seed=seed)
            return engine.reconstruct_slice(kspace, mask, False, options).reconstruction

    rows = bench.bench_anomaly(detectors, cases, recon, recon_slices, batch, by_source=by_source)
    for method, detector in detectors.items():
        typer.echo(f"{method}: {detector.attributes()}")
    family = lesion_family or bench.FAMILY[split].name
    print_rows(rows, f"mrdiff bench anomaly ({split} split, {family} lesion family)")
    write_json_rows(json_out, (row._asdict() for row in rows))


def _bench_detector(name: str, weights: Path | None, classifier: Path | None) -> AnomalyDetector:
    """``method[:guidance][@reference]`` -> a detector with validation-chosen knobs.

    ``guided:location`` takes the knobs validation chose for that guidance target.
    """
    method_and_guidance, _, reference = name.partition("@")
    method, _, guidance = method_and_guidance.partition(":")
    return build_detector(
        method, weights, classifier, reference=reference or None, guidance=guidance or None
    )


def register(app: typer.Typer) -> None:
    """Add `anomaly`, `train classifier|export-classifier` and three `bench` commands."""
    from services.commands.bench import bench_app
    from services.commands.train import train_app

    app.command("anomaly")(anomaly)
    train_app.command("classifier")(train_classifier_command)
    train_app.command("export-classifier")(export_classifier_command)
    bench_app.command("tune-anomaly")(tune_anomaly_command)
    bench_app.command("anomaly")(bench_anomaly_command)
    bench_app.command("classifier")(bench_classifier_command)
