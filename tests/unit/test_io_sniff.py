"""read_input: each format is recognised from its content; anything else is named and refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.recon.errors import InputError
from services.recon.io import (
    ImageVolume,
    KspaceVolume,
    read_input,
    write_nifti,
    write_reconstruction_h5,
)


def test_each_format_is_recognised(
    tmp_path: Path,
    io_coil_kspace: np.ndarray,
    io_phantom: np.ndarray,
    io_ismrmrd_file: Path,
    io_dicom_series_dir: Path,
) -> None:
    fastmri = tmp_path / "scan.data"  # content decides, not the name
    with h5py.File(fastmri, "w") as h5:
        h5.create_dataset("kspace", data=io_coil_kspace)
    assert isinstance(read_input(fastmri), KspaceVolume)

    raw = read_input(io_ismrmrd_file)
    assert isinstance(raw, KspaceVolume) and raw.attrs["source_format"] == "ismrmrd"

    recon = write_reconstruction_h5(
        tmp_path / "recon.h5", io_phantom, np.ones(32, bool), {"pixel_spacing_mm": [2.0, 2.0]}
    )
    images = read_input(recon)
    assert isinstance(images, ImageVolume) and images.pixel_spacing_mm == (2.0, 2.0)
    np.testing.assert_array_equal(images.images, io_phantom)

    assert isinstance(read_input(io_dicom_series_dir), ImageVolume)
    single = tmp_path / "IM_no_suffix"
    shutil.copy(io_dicom_series_dir / "IM0001.dcm", single)  # DICM preamble, no .dcm
    assert read_input(single).images.shape == (1, 32, 32)  # type: ignore[union-attr]

    nifti = write_nifti(tmp_path / "vol.nii.gz", io_phantom, (1.0, 1.0), 3.0)
    assert isinstance(read_input(nifti), ImageVolume)


def test_unrecognised_inputs_are_named(tmp_path: Path) -> None:
    other_h5 = tmp_path / "other.h5"
    with h5py.File(other_h5, "w") as h5:
        h5.create_dataset("images", data=np.ones((2, 2)))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake_h5 = tmp_path / "fake.h5"
    fake_h5.write_text("not really")
    empty = tmp_path / "empty.dcm"
    empty.touch()
    cases = {
        other_h5: "other.h5: HDF5 file without `kspace`",
        text: "notes.txt: unrecognised input format",
        fake_h5: "fake.h5: not an HDF5 file",
        empty: "empty.dcm: empty file",
        tmp_path / "absent.h5": "absent.h5: no such file or directory",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            read_input(path)
