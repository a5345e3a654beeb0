"""Typed volumes that cross the io boundary: measured k-space and magnitude images.

Axis conventions (shared by every reader and writer in this package):

- k-space is centered (DC at index N//2) and shaped (slices, coils, H, W); for scanner data H is
  the readout (frequency-encoding) axis and W the phase-encoding axis, as in fastMRI files, so
  1-D column masks act on W.
- images are (slices, H, W); ``pixel_spacing_mm`` is (spacing between rows, spacing between
  columns), the order of DICOM PixelSpacing.
- ``affine`` maps the voxel index (column, row, slice, 1) to RAS+ millimetres, i.e. it is the
  NIfTI affine of ``images.transpose(2, 1, 0)``; ``positions`` and ``orientation`` are the DICOM
  ImagePositionPatient (LPS, per slice) and ImageOrientationPatient (row then column direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class KspaceVolume:
    """Measured (or simulated) Cartesian k-space with the mask of what was sampled."""

    kspace: np.ndarray
    """complex64, (slices, coils, H, W); single-coil data has coils == 1."""
    multicoil: bool
    mask: np.ndarray
    """bool, (slices, H, W): True where k-space was sampled."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Input attributes kept (never patient identifiers)."""
    simulated: bool = False
    """True when the k-space was computed from magnitude images."""
    pixel_spacing_mm: tuple[float, float] | None = None
    source: str = ""
    """File name the volume came from (never patient information)."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(slices, coils, H, W)."""
        s, c, h, w = self.kspace.shape
        return (s, c, h, w)


@dataclass(eq=False)
class ImageVolume:
    """Magnitude images with the geometry needed to write results back (DICOM, NIfTI)."""

    images: np.ndarray
    """float32, (slices, H, W), rescale slope/intercept applied."""
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    affine: np.ndarray | None = None
    """4x4, voxel (column, row, slice, 1) -> RAS+ mm."""
    positions: np.ndarray | None = None
    """(slices, 3) DICOM ImagePositionPatient (LPS, mm) of each slice's first pixel."""
    orientation: np.ndarray | None = None
    """(6,) DICOM ImageOrientationPatient: row direction, then column direction (LPS)."""
    dicom_reference: dict[str, Any] | None = None
    """Study/frame-of-reference/series identifiers needed to write a derived series."""
    source: str = ""
    """File or folder name the volume came from (never patient information)."""
