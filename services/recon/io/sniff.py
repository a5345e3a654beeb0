"""Pick the reader for an input by looking at it (content first, then the name)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from services.recon.errors import InputError
from services.recon.io.dicom_reader import read_dicom_series
from services.recon.io.fastmri_h5 import read_fastmri_h5
from services.recon.io.ismrmrd_raw import read_ismrmrd
from services.recon.io.nifti import is_nifti_name, read_nifti
from services.recon.io.reconstruction_h5 import read_reconstruction_h5
from services.recon.io.volumes import ImageVolume, KspaceVolume

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"


def read_input(path: str | os.PathLike[str]) -> KspaceVolume | ImageVolume:
    """Read k-space (fastMRI HDF5, ISMRMRD) or images (reconstruction HDF5, DICOM, NIfTI).

    HDF5 with ``kspace`` -> fastMRI; with an ISMRMRD ``dataset`` group -> ISMRMRD; with
    ``reconstruction`` -> its images; a folder, ``.dcm`` or the DICM preamble -> DICOM series;
    ``.nii``/``.nii.gz`` -> NIfTI. Anything else raises :class:`InputError` saying why.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source.name}: no such file or directory")
    if source.is_dir():
        return read_dicom_series(source)
    if source.stat().st_size == 0:
        raise InputError(f"{source.name}: empty file")
    if h5py.is_hdf5(source):
        return _read_hdf5(source)
    if is_nifti_name(source):
        return read_nifti(source)
    if source.suffix.lower() == ".dcm" or _has_dicom_preamble(source):
        return read_dicom_series(source)
    if source.suffix.lower() in (".h5", ".hdf5", ".mrd"):
        raise InputError(f"{source.name}: not an HDF5 file")
    raise InputError(
        f"{source.name}: unrecognised input format (expected fastMRI or ISMRMRD HDF5, "
        "reconstruction HDF5, DICOM or NIfTI)"
    )


def _read_hdf5(source: Path) -> KspaceVolume | ImageVolume:
    with h5py.File(source, "r") as h5:
        keys = set(h5.keys())
        ismrmrd = isinstance(h5.get("dataset"), h5py.Group)
    if "kspace" in keys:
        return read_fastmri_h5(source)
    if ismrmrd:
        return read_ismrmrd(source)
    if "reconstruction" in keys:
        datasets, attrs = read_reconstruction_h5(source)
        images = datasets["reconstruction"]
        if images.ndim != 3 or np.iscomplexobj(images):
            raise InputError(f"{source.name}: `reconstruction` must be real (slices, H, W)")
        spacing = attrs.get("pixel_spacing_mm")
        return ImageVolume(
            images=images.astype(np.float32),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1]))
            if isinstance(spacing, list) and len(spacing) == 2
            else None,
            source=source.name,
        )
    raise InputError(
        f"{source.name}: HDF5 file without `kspace`, an ISMRMRD `dataset` group or `reconstruction`"
    )


def _has_dicom_preamble(source: Path) -> bool:
    with source.open("rb") as handle:
        head = handle.read(DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC))
    return head[DICOM_PREAMBLE_LENGTH:] == DICOM_MAGIC
