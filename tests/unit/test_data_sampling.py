"""World-coordinate slice sampling: exact for linear fields, planes point the right way."""

from __future__ import annotations

import numpy as np

from services.recon.data.sampling import make_plane, plane_world_points, sample_trilinear
from services.recon.data.templates import SourceVolume


def linear_source() -> SourceVolume:
    """A 2 mm volume whose two channels are x and 2y + z in world millimetres."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -30.0, -10.0]
    i, j, k = np.meshgrid(np.arange(21), np.arange(31), np.arange(11), indexing="ij")
    x, y, z = (affine[:3, :3] @ np.stack([i, j, k]).reshape(3, -1)).reshape(3, 21, 31, 11)
    x, y, z = x + affine[0, 3], y + affine[1, 3], z + affine[2, 3]
    data = np.stack([x, 2 * y + z], axis=-1).astype(np.float32)
    return SourceVolume(
        "linear",
        "test:linear",
        "intensity",
        ("x", "mix"),
        data,
        affine,
        2.0,
        False,
        False,
        "test",
        "test",
    )


def test_trilinear_is_exact_for_linear_fields() -> None:
    source = linear_source()
    rng = np.random.default_rng(0)
    points = rng.uniform([-18, -28, -8], [18, 28, 8], size=(50, 3))
    values = sample_trilinear(source, points)
    np.testing.assert_allclose(values[:, 0], points[:, 0], atol=1e-4)
    np.testing.assert_allclose(values[:, 1], 2 * points[:, 1] + points[:, 2], atol=1e-4)


def test_points_outside_take_the_fill_value() -> None:
    source = linear_source()
    points = np.array([[100.0, 0.0, 0.0], [0.0, 0.0, -50.0]])
    values = sample_trilinear(source, points, fill=np.array([-1.0, -2.0], dtype=np.float32))
    np.testing.assert_array_equal(values, [[-1.0, -2.0], [-1.0, -2.0]])
    extended = sample_trilinear(source, points, extend_inferior=True)
    np.testing.assert_allclose(extended[1], [0.0, -10.0], atol=1e-4)


def test_axial_plane_is_radiological() -> None:
    plane = make_plane("axial", np.zeros(3), size=4, pixel_mm=2.0)
    points = plane_world_points(plane)
    assert points.shape == (4, 4, 3)
    assert points[0, 0, 0] > points[0, -1, 0]  # columns run from patient right to left
    assert points[0, 0, 1] > points[-1, 0, 1]  # rows run from anterior to posterior
    np.testing.assert_allclose(points[..., 2], 0.0)
    np.testing.assert_allclose(np.abs(points[0, 1] - points[0, 0]).sum(), 2.0)


def test_scale_magnifies_and_rotation_keeps_spacing() -> None:
    plane = make_plane("coronal", np.zeros(3), 8, 2.0, in_plane_rotation=0.3, scale=(2.0, 2.0))
    assert np.isclose(np.linalg.norm(plane.u), 1.0) and np.isclose(np.linalg.norm(plane.v), 1.0)
    assert np.isclose(abs(plane.normal[1]), 1.0)
