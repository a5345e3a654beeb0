"""Sample oblique 2-D slices from template volumes in world (MNI millimetre) coordinates.

A :class:`SlicePlane` places a ``size`` x ``size`` pixel grid in the world: its centre, the unit
vectors along image columns (``u``) and rows (``v``), and the pixel spacing. Every template is
then read at the same world points with trilinear interpolation, so sources of different voxel
sizes and grids line up, and rotations, scaling and elastic warps cost one interpolation.

Display convention (radiological): axial images have anterior at the top and the patient's
right on the image's left; coronal images superior at the top, patient's right on the left;
sagittal images superior at the top, anterior on the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.recon.data.templates import SourceVolume

Orientation = Literal["axial", "coronal", "sagittal"]

PLANE_AXES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    # (u: direction of increasing column, v: direction of increasing row) in RAS world axes
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}


@dataclass(frozen=True)
class SlicePlane:
    """A square pixel grid in world space: ``centre`` (mm), column/row steps ``u``/``v`` (mm)."""

    centre: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size: int

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about unit ``axis`` by ``angle`` radians."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def make_plane(
    orientation: Orientation,
    centre: np.ndarray,
    size: int,
    pixel_mm: float,
    in_plane_rotation: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
) -> SlicePlane:
    """A plane of ``orientation`` through ``centre``, rotated in plane and tilted out of plane.

    ``scale`` > 1 magnifies the anatomy (the world step per pixel shrinks by that factor).
    """
    u, v = PLANE_AXES[orientation]
    normal = np.cross(u, v)
    rotation = rotation_about(normal, in_plane_rotation)
    rotation = rotation_about(u, tilt[0]) @ rotation_about(v, tilt[1]) @ rotation
    u_world = rotation @ u * (pixel_mm / scale[0])
    v_world = rotation @ v * (pixel_mm / scale[1])
    return SlicePlane(centre=np.asarray(centre, dtype=np.float64), u=u_world, v=v_world, size=size)


def plane_world_points(plane: SlicePlane, displacement_mm: np.ndarray | None = None) -> np.ndarray:
    """World coordinates (size, size, 3) of the pixel centres, optionally displaced (mm)."""
    offsets = np.arange(plane.size, dtype=np.float64) - (plane.size - 1) / 2.0
    points = (
        plane.centre[None, None, :]
        + offsets[None, :, None] * plane.u[None, None, :]
        + offsets[:, None, None] * plane.v[None, None, :]
    )
    if displacement_mm is not None:
        points = points + displacement_mm
    return points


def sample_trilinear(
    source: SourceVolume,
    points: np.ndarray,
    fill: np.ndarray | None = None,
    extend_inferior: bool = False,
) -> np.ndarray:
    """Trilinear values of every channel of ``source`` at world ``points`` (..., 3) -> (..., C).

    Points outside the volume take ``fill`` (per channel; zeros by default). With
    ``extend_inferior`` the lowest axial plane is repeated below the volume, so the neck
    continues instead of ending in a straight cut (templates stop at MNI z = -72 mm).
    """
    flat = points.reshape(-1, 3)
    inverse = np.linalg.inv(source.affine)
    ijk = flat @ inverse[:3, :3].T + inverse[:3, 3]
    if extend_inferior:
        ijk[:, 2] = np.maximum(ijk[:, 2], 0.0)
    shape = np.array(source.shape)
    base = np.floor(ijk).astype(np.int64)
    frac = (ijk - base).astype(np.float32)
    inside = np.all((base >= 0) & (base < shape - 1), axis=1)
    base = np.clip(base, 0, shape - 2)
    channels = source.data.shape[-1]
    # (Z, Y, X, C) memory order: flat row of voxel (i, j, k) is i + X * (j + Y * k)
    table = np.ascontiguousarray(source.data.transpose(2, 1, 0, 3)).reshape(-1, channels)
    strides = np.array([1, shape[0], shape[0] * shape[1]], dtype=np.int64)
    origin = base @ strides
    lower = 1.0 - frac
    result = np.zeros((flat.shape[0], channels), dtype=np.float32)
    for corner in range(8):
        di, dj, dk = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
        weight = (
            (frac[:, 0] if di else lower[:, 0])
            * (frac[:, 1] if dj else lower[:, 1])
            * (frac[:, 2] if dk else lower[:, 2])
        )
        index = origin + (di * strides[0] + dj * strides[1] + dk * strides[2])
        result += weight[:, None] * np.take(table, index, axis=0)
    fill_values = np.zeros(channels, dtype=np.float32) if fill is None else fill
    result[~inside] = fill_values
    return result.reshape(*points.shape[:-1], channels)
