"""Patient geometry: DICOM plane positions/orientation <-> the RAS+ voxel affine.

DICOM (PS3.3 C.7.6.2) gives each slice's first-pixel position and the row/column direction
cosines in LPS; NIfTI gives one 4x4 affine in RAS+. Here the affine maps the voxel index
(column, row, slice) of an (S, H, W) array, i.e. it is the NIfTI affine of
``images.transpose(2, 1, 0)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIAL_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


class PlaneGeometry(NamedTuple):
    """Per-slice DICOM geometry of an (S, H, W) volume."""

    positions: np.ndarray
    """(S, 3) ImagePositionPatient, LPS mm."""
    orientation: np.ndarray
    """(6,) ImageOrientationPatient: row direction then column direction."""
    pixel_spacing_mm: tuple[float, float]
    """(between rows, between columns)."""
    slice_step_mm: float


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction."""
    normal = np.cross(orientation[:3], orientation[3:6])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else np.array([0.0, 0.0, 1.0])


def affine_from_planes(
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float | None,
) -> np.ndarray:
    """RAS+ affine of voxel (column, row, slice) from sorted DICOM slice positions."""
    row_spacing, column_spacing = pixel_spacing_mm
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        step = slice_normal(orientation) * (slice_thickness_mm or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(orientation[:3]) * column_spacing
    lps[:3, 1] = np.asarray(orientation[3:6]) * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def planes_from_affine(affine: np.ndarray, slices: int) -> PlaneGeometry:
    """DICOM slice positions, orientation and spacing of an (S, H, W) volume with ``affine``."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    column_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    column_spacing = float(np.linalg.norm(column_step)) or 1.0
    row_spacing = float(np.linalg.norm(row_step)) or 1.0
    orientation = np.concatenate([column_step / column_spacing, row_step / row_spacing])
    positions = lps[:3, 3][None, :] + np.arange(slices)[:, None] * slice_step[None, :]
    return PlaneGeometry(
        positions=positions,
        orientation=orientation,
        pixel_spacing_mm=(row_spacing, column_spacing),
        slice_step_mm=float(np.linalg.norm(slice_step)),
    )


def centred_planes(
    shape: tuple[int, int, int],
    pixel_spacing_mm: tuple[float, float],
    slice_step_mm: float,
    orientation: np.ndarray = AXIAL_ORIENTATION,
) -> PlaneGeometry:
    """Slices centred on the origin (axial by default), for volumes that come without geometry."""
    slices, rows, columns = shape
    row_spacing, column_spacing = pixel_spacing_mm
    row_direction, column_direction = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    normal = slice_normal(np.asarray(orientation))
    first = -(
        (columns - 1) / 2 * column_spacing * row_direction
        + (rows - 1) / 2 * row_spacing * column_direction
        + (slices - 1) / 2 * slice_step_mm * normal
    )
    positions = first[None, :] + np.arange(slices)[:, None] * slice_step_mm * normal[None, :]
    return PlaneGeometry(
        positions, np.asarray(orientation, dtype=float).copy(), pixel_spacing_mm, slice_step_mm
    )
