"""NIfTI volumes (nibabel): slices along the last axis <-> (S, H, W) arrays.

A NIfTI array indexed (i, j, k) becomes ``images[k, j, i]``, so voxel (column, row, slice)
keeps the NIfTI affine unchanged (see :mod:`services.recon.io.geometry`).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from services.recon.errors import InputError
from services.recon.io.atomic import atomic_output
from services.recon.io.geometry import planes_from_affine
from services.recon.io.input_files import require_file
from services.recon.io.notice import RESEARCH_USE_ONLY
from services.recon.io.volumes import ImageVolume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_name(path: str | os.PathLike[str]) -> bool:
    """True for ``.nii`` / ``.nii.gz`` file names."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | os.PathLike[str]) -> ImageVolume:
    """Read a 2-D/3-D NIfTI (or 4-D with one volume) as magnitude (S, H, W) images."""
    file = require_file(path)
    try:
        image = nib.load(file)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise TypeError(type(image).__name__)
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        reason = type(error).__name__
        raise InputError(f"{file.name}: not a readable NIfTI file ({reason})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputError(f"{file.name}: NIfTI must be 2-D or 3-D; got shape {data.shape}")
    if data.size == 0:
        raise InputError(f"{file.name}: NIfTI volume is empty")
    magnitude = np.abs(data) if np.iscomplexobj(data) else data
    if magnitude.dtype.kind not in "biuf":
        raise InputError(f"{file.name}: unsupported NIfTI data type {data.dtype}")
    images = np.ascontiguousarray(magnitude.transpose(2, 1, 0), dtype=np.float32)
    if not np.isfinite(images).all():
        raise InputError(f"{file.name}: NIfTI volume contains NaN or inf")
    affine = np.asarray(image.affine, dtype=np.float64)
    geometry = planes_from_affine(affine, images.shape[0])
    zooms = image.header.get_zooms()
    thickness = float(zooms[2]) if len(zooms) > 2 and zooms[2] > 0 else None
    return ImageVolume(
        images=images,
        pixel_spacing_mm=geometry.pixel_spacing_mm,
        slice_thickness_mm=thickness,
        affine=affine,
        positions=geometry.positions,
        orientation=geometry.orientation,
        dicom_reference=None,
        source=file.name,
    )


def write_nifti(
    path: str | os.PathLike[str],
    volume: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    overwrite: bool = False,
    affine: np.ndarray | None = None,
) -> Path:
    """Write (S, H, W) float images as NIfTI-1 (atomic; refuses to overwrite unless asked).

    Without ``affine`` the voxel axes are aligned with RAS+ at the given spacing.
    """
    target = Path(path)
    if not is_nifti_name(target):
        raise InputError(f"{target.name}: NIfTI output must end with .nii or .nii.gz")
    images = np.asarray(volume)
    if images.ndim != 3 or images.size == 0:
        raise InputError(f"volume must be (slices, H, W); got shape {images.shape}")
    if np.iscomplexobj(images) or images.dtype.kind not in "biuf":
        raise InputError(f"volume must be real-valued; got dtype {images.dtype}")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise InputError("volume contains NaN or inf")
    row_spacing, column_spacing = (float(value) for value in pixel_spacing_mm)
    if min(row_spacing, column_spacing, float(slice_thickness_mm)) <= 0:
        raise InputError("pixel spacing and slice thickness must be positive")
    if affine is None:
        affine = np.diag([column_spacing, row_spacing, float(slice_thickness_mm), 1.0])
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}")
    data = np.ascontiguousarray(images.transpose(2, 1, 0), dtype=np.float32)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units(xyz="mm")
    image.header["descrip"] = RESEARCH_USE_ONLY.encode()
    image.set_sform(affine, code="scanner")
    image.set_qform(affine, code="scanner")
    with atomic_output(target, overwrite) as temp:
        nib.save(image, temp)
    return target
