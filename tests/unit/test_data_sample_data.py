"""Demo sample data: an undersampled 8-coil HDF5 and an MR DICOM series that load back."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from services.recon.data.sample_data import SAMPLE_H5_NAME, write_sample_data
from services.recon.errors import InputError
from services.recon.io import read_dicom_series, read_fastmri_h5


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("sample")
    write_sample_data(folder, seed=0)
    return folder


def test_kspace_file_is_an_undersampled_multicoil_acquisition(sample: Path) -> None:
    volume = read_fastmri_h5(sample / SAMPLE_H5_NAME)
    assert volume.kspace.shape == (8, 8, 128, 128) and volume.multicoil
    assert volume.simulated and volume.pixel_spacing_mm == (2.0, 2.0)
    columns = volume.mask[0].any(axis=0)
    assert 3.5 <= columns.size / columns.sum() <= 4.5
    assert np.all(volume.kspace[:, :, :, ~columns] == 0)
    assert np.all(volume.mask == volume.mask[:1])
    with h5py.File(sample / SAMPLE_H5_NAME) as h5:
        assert h5["mask"].shape == (128,)
        assert h5.attrs["simulated_kspace"]
        assert "not for diagnosis" in str(h5.attrs["research_use_only"]).lower()
        reference = h5["reconstruction_rss"][()]
    assert reference.shape == (8, 128, 128) and reference.dtype == np.float32
    assert (reference > 0.1 * np.percentile(reference, 99)).mean() > 0.15


def test_dicom_series_matches_the_reference(sample: Path) -> None:
    series = read_dicom_series(sample / "sample_brain_dicom")
    with h5py.File(sample / SAMPLE_H5_NAME) as h5:
        reference = h5["reconstruction_rss"][()]
    assert series.images.shape == reference.shape
    assert series.pixel_spacing_mm == (2.0, 2.0)
    np.testing.assert_allclose(series.images, reference, atol=1e-3 * reference.max())
    assert series.positions is not None
    np.testing.assert_allclose(np.diff(series.positions[:, 2]), 8.0)
    first = pydicom.dcmread(sorted((sample / "sample_brain_dicom").glob("*.dcm"))[0])
    assert first.Modality == "MR"
    assert first.SOPInstanceUID.is_valid and first.StudyInstanceUID.is_valid


def test_sample_data_is_deterministic_and_not_overwritten(sample: Path, tmp_path: Path) -> None:
    write_sample_data(tmp_path, seed=0)
    with h5py.File(sample / SAMPLE_H5_NAME) as a, h5py.File(tmp_path / SAMPLE_H5_NAME) as b:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])
    with pytest.raises(InputError):
        write_sample_data(tmp_path, seed=0)


def test_cli_commands(tmp_path: Path) -> None:
    import typer

    from services.commands.data import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    splits = runner.invoke(app, ["data", "splits"])
    assert splits.exit_code == 0 and "spm_single_subj_T1" in splits.output
    made = runner.invoke(app, ["sample-data", str(tmp_path / "demo")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "demo" / SAMPLE_H5_NAME).is_file()
