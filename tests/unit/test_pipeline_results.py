"""A finished job's artefacts: HDF5 layout, NIfTI, previews and report.json."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipelines.options import JobOptions
from pipelines.results import JobOutputs, write_outputs
from pipelines.study import Study, StudyKind
from services.recon.anomaly import AnomalyResult
from services.recon.engine import SliceResult
from services.recon.io import ImageVolume, KspaceVolume, read_reconstruction_h5

SLICES, SIZE = 3, 16
NOTICE = "research use only, not for diagnosis"


def kspace_volume() -> KspaceVolume:
    mask = np.zeros((SLICES, SIZE, SIZE), dtype=bool)
    mask[:, :, ::2] = True
    return KspaceVolume(
        kspace=np.ones((SLICES, 1, SIZE, SIZE), dtype=np.complex64),
        multicoil=False,
        mask=mask,
        attrs={"simulated_kspace": True, "acceleration": 2.0},
        simulated=True,
        pixel_spacing_mm=(2.0, 2.0),
        source="x.h5",
    )


def slice_results(with_variance: bool) -> list[SliceResult]:
    rng = np.random.default_rng(0)
    return [
        SliceResult(
            reconstruction=rng.random((SIZE, SIZE), dtype=np.float32),
            variance=rng.random((SIZE, SIZE), dtype=np.float32) if with_variance else None,
            dc_residual=0.01 * (index + 1),
            seconds=0.25,
            warnings=(),
        )
        for index in range(SLICES)
    ]


def outputs(
    study: Study,
    options: JobOptions,
    recon: list[SliceResult] | None,
    anomaly: list[AnomalyResult] | None = None,
) -> JobOutputs:
    return JobOutputs(
        job_id="job-1",
        tenant="acme",
        options=options,
        study=study,
        input_keys=["acme/s/x.h5"],
        content_sha256={"acme/s/x.h5": "a" * 64},
        models={"mrdiff-prior-test": "b" * 64},
        reconstruction=recon,
        anomaly=anomaly,
        timings={"compute_seconds": 0.75, "pipeline_seconds": 1.0},
        flow_run_id="run-1",
    )


def test_diffusion_outputs_follow_the_design_layout(tmp_path: Path) -> None:
    study = Study(StudyKind.FASTMRI, kspace_volume(), None, anomaly=False)
    options = JobOptions(method="diffusion", seed=5, samples=4)
    names = write_outputs(outputs(study, options, slice_results(True)), tmp_path)

    assert {
        "reconstruction.h5",
        "reconstruction.nii.gz",
        "variance.nii.gz",
        "report.json",
        "previews/reconstruction-002.png",
        "previews/uncertainty-000.png",
    } <= set(names)
    assert all((tmp_path / name).is_file() for name in names)
    datasets, attrs = read_reconstruction_h5(tmp_path / "reconstruction.h5")
    assert datasets["reconstruction"].shape == datasets["variance"].shape == (SLICES, SIZE, SIZE)
    assert datasets["mask"].dtype == bool
    assert attrs["method"] == "diffusion" and attrs["seed"] == 5 and attrs["samples"] == 4
    assert attrs["model"] == "mrdiff-prior-test" and attrs["model_sha256"] == "b" * 64
    assert attrs["research_use_only"] == NOTICE and bool(attrs["simulated_kspace"])
    np.testing.assert_allclose(attrs["dc_residual"], [0.01, 0.02, 0.03])
    np.testing.assert_array_equal(attrs["slice_seeds"], [5, 6, 7])
    nifti = nib.load(str(tmp_path / "reconstruction.nii.gz"))
    assert nifti.shape[-1] == SLICES or nifti.shape[0] == SLICES
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["research_use_only"] == NOTICE
    assert report["seeds"] == {"base": 5, "per_slice": [5, 6, 7]}
    assert report["models"] == {"mrdiff-prior-test": "b" * 64}
    assert [row["dc_residual"] for row in report["per_slice"]] == [0.01, 0.02, 0.03]
    assert report["metrics"]["dc_residual_max"] == pytest.approx(0.03)
    assert report["inputs"] == [{"key": "acme/s/x.h5", "sha256": "a" * 64}]


def test_baselines_store_no_variance(tmp_path: Path) -> None:
    study = Study(StudyKind.FASTMRI, kspace_volume(), None, anomaly=False)
    names = write_outputs(
        outputs(study, JobOptions(method="zero-filled"), slice_results(False)), tmp_path
    )
    datasets, attrs = read_reconstruction_h5(tmp_path / "reconstruction.h5")
    assert "variance" not in datasets and "variance.nii.gz" not in names
    assert "model" not in attrs and attrs["method"] == "zero-filled"


def test_anomaly_maps_of_images_go_to_their_own_file(tmp_path: Path) -> None:
    import h5py

    images = ImageVolume(
        images=np.ones((SLICES, SIZE, SIZE), dtype=np.float32),
        pixel_spacing_mm=(1.0, 1.0),
        slice_thickness_mm=3.0,
        source="s",
    )
    study = Study(StudyKind.DICOM, None, images, anomaly=True)
    anomaly = [
        AnomalyResult(
            np.full((SIZE, SIZE), 0.1 * i, np.float32),
            np.zeros((SIZE, SIZE), np.float32),
            np.eye(SIZE, dtype=bool),
            0.5,
        )
        for i in range(SLICES)
    ]
    options = JobOptions(reconstruct=False, anomaly=True)
    names = write_outputs(outputs(study, options, None, anomaly), tmp_path)

    assert "reconstruction.h5" not in names
    assert {"anomaly.h5", "anomaly_map.nii.gz", "previews/anomaly-001.png"} <= set(names)
    with h5py.File(tmp_path / "anomaly.h5") as h5:
        assert set(h5) == {"anomaly_map", "healthy", "anomaly_mask"}
        assert h5["anomaly_mask"].dtype == bool
        assert h5.attrs["research_use_only"] == NOTICE
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] is None
    assert report["per_slice"][1]["anomaly_fraction"] == pytest.approx(1 / SIZE)
