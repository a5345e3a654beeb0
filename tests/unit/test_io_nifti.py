"""NIfTI: (S, H, W) <-> slices along the last axis, geometry kept, atomic writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from services.recon.errors import InputError
from services.recon.io import (
    RESEARCH_USE_ONLY,
    read_dicom_series,
    read_nifti,
    write_dicom_series,
    write_nifti,
)


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_round_trip(tmp_path: Path, io_phantom: np.ndarray, name: str) -> None:
    path = write_nifti(tmp_path / name, io_phantom, (1.25, 1.5), 3.0)
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    assert image.shape == (32, 32, 3)  # (columns, rows, slices)
    assert image.header["descrip"].item().decode() == RESEARCH_USE_ONLY
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.images, io_phantom)
    assert volume.pixel_spacing_mm == pytest.approx((1.25, 1.5))
    assert volume.slice_thickness_mm == pytest.approx(3.0)
    assert volume.affine is not None
    np.testing.assert_allclose(np.diag(volume.affine), [1.5, 1.25, 3.0, 1.0])
    assert volume.source == name
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_slices_run_along_the_last_nifti_axis(tmp_path: Path) -> None:
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)  # (i, j, k)
    path = tmp_path / "raw.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = read_nifti(path)
    assert volume.images.shape == (2, 3, 4)
    assert volume.images[1, 2, 3] == data[3, 2, 1]


def test_dicom_geometry_survives_nifti(tmp_path: Path, io_dicom_series_dir: Path) -> None:
    dicom = read_dicom_series(io_dicom_series_dir)
    assert dicom.affine is not None and dicom.positions is not None
    path = write_nifti(
        tmp_path / "from_dicom.nii.gz", dicom.images, (1.25, 1.5), 3.0, affine=dicom.affine
    )
    back = read_nifti(path)
    assert back.positions is not None and back.orientation is not None
    np.testing.assert_allclose(back.positions, dicom.positions, atol=1e-4)
    np.testing.assert_allclose(back.orientation, [1, 0, 0, 0, 1, 0], atol=1e-6)
    files = write_dicom_series(
        tmp_path / "dicom",
        back.images,
        back.pixel_spacing_mm or (1, 1),
        3.0,
        positions=back.positions,
        orientation=back.orientation,
    )
    again = read_dicom_series(files)
    assert again.positions is not None
    np.testing.assert_allclose(again.positions, dicom.positions, atol=1e-3)


def test_bad_nifti_inputs(tmp_path: Path, io_phantom: np.ndarray) -> None:
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"\x01" * 400)
    with pytest.raises(InputError, match=r"garbage.nii: not a readable NIfTI file"):
        read_nifti(garbage)
    series = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2, 3), np.float32), np.eye(4)), series)
    with pytest.raises(InputError, match=r"series.nii: NIfTI must be 2-D or 3-D"):
        read_nifti(series)
    with pytest.raises(InputError, match=r"\.nii or \.nii\.gz"):
        write_nifti(tmp_path / "out.img", io_phantom, (1.0, 1.0), 1.0)
    with pytest.raises(InputError, match="NaN"):
        write_nifti(tmp_path / "nan.nii", io_phantom * np.nan, (1.0, 1.0), 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.nii", "series.nii"]


def test_write_refuses_to_overwrite(tmp_path: Path, io_phantom: np.ndarray) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", io_phantom, (1.0, 1.0), 1.0)
    with pytest.raises(InputError, match="already exists"):
        write_nifti(path, io_phantom * 2, (1.0, 1.0), 1.0)
    np.testing.assert_array_equal(read_nifti(path).images, io_phantom)
    write_nifti(path, io_phantom * 2, (1.0, 1.0), 1.0, overwrite=True)
    np.testing.assert_array_equal(read_nifti(path).images, io_phantom * 2)
