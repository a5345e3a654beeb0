"""A finished job's artefacts, written to a local folder before they are staged and published.

Layout (names are artefact names below ``<tenant>/jobs/<job_id>/`` once published):

    reconstruction.h5            design.md layout: reconstruction, variance (sampling methods
                                 only), mask, attrs; plus anomaly_map/healthy/anomaly_mask
    reconstruction.nii.gz        magnitude volume (and variance.nii.gz, anomaly_map.nii.gz)
    anomaly.h5                   image inputs with anomaly maps only (no reconstruction)
    previews/reconstruction-NNN.png, previews/uncertainty-NNN.png, previews/anomaly-NNN.png
    report.json                  inputs, options, seeds, model versions, timings, per-slice
                                 data-consistency residuals and warnings

Everything says "research use only, not for diagnosis".
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipelines.options import JobOptions
from pipelines.study import Study
from services.recon.io import (
    RESEARCH_USE_ONLY,
    atomic_output,
    write_nifti,
    write_png,
    write_reconstruction_h5,
)
from services.recon.io.hdf5_attrs import write_attrs

REPORT_NAME = "report.json"
REPORT_FORMAT = 1
PREVIEW_WINDOW_PERCENTILES = (0.5, 99.5)


@dataclass
class JobOutputs:
    """Everything computed for one job, ready to be written."""

    job_id: str
    tenant: str
    options: JobOptions
    study: Study
    input_keys: Sequence[str]
    content_sha256: Mapping[str, str]
    models: Mapping[str, str]
    """Model name -> sha256 as the workers loaded them (or role -> sha256 from the record)."""
    reconstruction: list[Any] | None = None
    """``SliceResult`` per slice, or None when nothing was reconstructed."""
    anomaly: list[Any] | None = None
    """``AnomalyResult`` per slice, or None."""
    timings: dict[str, float] = field(default_factory=dict)
    flow_run_id: str | None = None


def write_outputs(outputs: JobOutputs, folder: Path) -> list[str]:
    """Write every artefact of ``outputs`` under ``folder``; returns their artefact names."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    spacing, thickness, affine = _geometry(outputs.study)
    recon = outputs.reconstruction
    anomaly_sets = _anomaly_datasets(outputs.anomaly)
    if recon is not None:
        assert outputs.study.kspace is not None
        images = np.stack([r.reconstruction for r in recon]).astype(np.float32)
        variance = _stacked_variance(recon)
        extra = anomaly_sets if outputs.study.images is None else {}
        write_reconstruction_h5(
            folder / "reconstruction.h5",
            images,
            outputs.study.kspace.mask,
            h5_attrs(outputs),
            variance=variance,
            extra=extra,
        )
        names.append("reconstruction.h5")
        names += _nifti(folder, "reconstruction.nii.gz", images, spacing, thickness, affine)
        names += _previews(folder, "reconstruction", images, "gray")
        if variance is not None:
            names += _nifti(folder, "variance.nii.gz", variance, spacing, thickness, affine)
            names += _previews(folder, "uncertainty", np.sqrt(np.maximum(variance, 0)), "hot")
    if anomaly_sets:
        if recon is None or outputs.study.images is not None:
            _write_anomaly_h5(folder / "anomaly.h5", anomaly_sets, h5_attrs(outputs))
            names.append("anomaly.h5")
        anomaly_map = anomaly_sets["anomaly_map"]
        names += _nifti(folder, "anomaly_map.nii.gz", anomaly_map, spacing, thickness, affine)
        names += _previews(folder, "anomaly", anomaly_map, "hot")
    report = build_report(outputs)
    with atomic_output(folder / REPORT_NAME) as temp:
        temp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    names.append(REPORT_NAME)
    return names


def slice_seeds(options: JobOptions, slices: int) -> list[int]:
    """The seed each slice was reconstructed with (the engine's convention: seed + index)."""
    return [options.seed + index for index in range(slices)]


def h5_attrs(outputs: JobOutputs) -> dict[str, Any]:
    """HDF5 attributes (design.md) for the job's output files."""
    options = outputs.options
    study = outputs.study
    attrs: dict[str, Any] = {}
    if study.kspace is not None:  # what the input said about itself (never identifiers)
        attrs.update({k: v for k, v in study.kspace.attrs.items() if _plain_attr(v)})
    attrs |= {
        "research_use_only": RESEARCH_USE_ONLY,
        "job_id": outputs.job_id,
        "input_format": study.kind.value,
        "seed": options.seed,
        "options": json.dumps(options.as_record(), sort_keys=True),
    }
    if outputs.reconstruction is not None and study.kspace is not None:
        results = outputs.reconstruction
        attrs.update(
            method=options.method,
            simulated_kspace=bool(study.kspace.simulated),
            dc_residual=np.array([r.dc_residual for r in results], dtype=np.float64),
            seconds=float(sum(r.seconds for r in results)),
            slice_seeds=np.array(slice_seeds(options, len(results)), dtype=np.int64),
            warnings="; ".join(sorted({w for r in results for w in r.warnings})),
        )
        if options.method == "diffusion":
            name, digest = _prior(outputs.models)
            attrs.update(
                model=name,
                model_sha256=digest,
                samples=options.samples,
                steps=options.steps,
                refine_steps=options.refine_steps,
                variance_smoothing_px=options.variance_smoothing_px,
            )
    if outputs.anomaly is not None:
        attrs["anomaly_seconds"] = float(sum(r.seconds for r in outputs.anomaly))
    return attrs


def build_report(outputs: JobOutputs) -> dict[str, Any]:
    """The ``report.json`` document of a job."""
    study = outputs.study
    slices: list[dict[str, Any]] = []
    seeds = slice_seeds(outputs.options, study.slices)
    for index in range(study.slices):
        row: dict[str, Any] = {"index": index, "seed": seeds[index]}
        if outputs.reconstruction is not None:
            result = outputs.reconstruction[index]
            row.update(
                seconds=round(float(result.seconds), 4),
                dc_residual=float(result.dc_residual),
                warnings=list(result.warnings),
            )
            if result.variance is not None:
                row["mean_std"] = float(np.sqrt(np.maximum(result.variance, 0)).mean())
        if outputs.anomaly is not None:
            anomaly = outputs.anomaly[index]
            row.update(
                anomaly_seconds=round(float(anomaly.seconds), 4),
                anomaly_fraction=float(np.mean(anomaly.anomaly_mask)),
            )
        slices.append(row)
    recon = outputs.reconstruction
    metrics: dict[str, Any] = {}
    if recon is not None:
        residuals = np.array([r.dc_residual for r in recon], dtype=np.float64)
        metrics.update(
            dc_residual_mean=float(residuals.mean()),
            dc_residual_max=float(residuals.max()),
            compute_seconds=float(sum(r.seconds for r in recon)),
        )
    kspace = study.kspace
    return {
        "format": REPORT_FORMAT,
        "research_use_only": RESEARCH_USE_ONLY,
        "job_id": outputs.job_id,
        "tenant": outputs.tenant,
        "flow_run_id": outputs.flow_run_id,
        "written_at": datetime.now(UTC).isoformat(),
        "inputs": [
            {"key": key, "sha256": outputs.content_sha256.get(key)} for key in outputs.input_keys
        ],
        "input_format": study.kind.value,
        "slices": study.slices,
        "shape": None if kspace is None else list(kspace.kspace.shape),
        "multicoil": None if kspace is None else bool(kspace.multicoil),
        "simulated_kspace": None if kspace is None else bool(kspace.simulated),
        "options": outputs.options.as_record(),
        "method": outputs.options.method if recon is not None else None,
        "seeds": {"base": outputs.options.seed, "per_slice": seeds},
        "models": dict(outputs.models),
        "timings_seconds": {k: round(float(v), 4) for k, v in outputs.timings.items()},
        "metrics": metrics,
        "per_slice": slices,
        "software": {"mrdiff": _version(), "python": platform.python_version()},
    }


def _prior(models: Mapping[str, str]) -> tuple[str, str]:
    """Name and sha256 of the diffusion prior among ``models``."""
    for name, digest in models.items():
        if name != "classifier" and "classifier" not in name:
            return name, digest
    return "", ""


def _plain_attr(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | np.generic)


def _stacked_variance(results: Sequence[Any]) -> np.ndarray | None:
    variances = [r.variance for r in results]
    if any(v is None for v in variances):
        return None
    return np.stack(variances).astype(np.float32)


def _anomaly_datasets(results: Sequence[Any] | None) -> dict[str, np.ndarray]:
    if results is None:
        return {}
    return {
        "anomaly_map": np.stack([r.anomaly_map for r in results]).astype(np.float32),
        "healthy": np.stack([r.healthy for r in results]).astype(np.float32),
        "anomaly_mask": np.stack([r.anomaly_mask for r in results]).astype(bool),
    }


def _write_anomaly_h5(
    path: Path, datasets: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
) -> None:
    with atomic_output(path) as temp, h5py.File(temp, "w") as h5:
        for name, values in datasets.items():
            h5.create_dataset(name, data=values)
        write_attrs(h5.attrs, {**attrs, "research_use_only": RESEARCH_USE_ONLY})


def _geometry(study: Study) -> tuple[tuple[float, float], float, np.ndarray | None]:
    """Pixel spacing, slice thickness and affine for NIfTI outputs (1 mm when unknown)."""
    if study.images is not None:
        spacing = study.images.pixel_spacing_mm or (1.0, 1.0)
        thickness = study.images.slice_thickness_mm or 1.0
        return spacing, float(thickness), study.images.affine
    assert study.kspace is not None
    return study.kspace.pixel_spacing_mm or (1.0, 1.0), 1.0, None


def _nifti(
    folder: Path,
    name: str,
    volume: np.ndarray,
    spacing: tuple[float, float],
    thickness: float,
    affine: np.ndarray | None,
) -> list[str]:
    write_nifti(folder / name, volume.astype(np.float32), spacing, thickness, affine=affine)
    return [name]


def _previews(folder: Path, stem: str, volume: np.ndarray, colormap: str) -> list[str]:
    """One PNG per slice, windowed over the whole volume so slices compare."""
    low, high = (float(v) for v in np.percentile(volume, PREVIEW_WINDOW_PERCENTILES))
    if not high > low:
        high = low + 1.0
    names = []
    for index, plane in enumerate(volume):
        name = f"previews/{stem}-{index:03d}.png"
        write_png(folder / name, plane, window=(low, high), colormap=colormap)
        names.append(name)
    return names


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mrdiff")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "unknown"
