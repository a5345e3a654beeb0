"""Smooth random 2-D fields: bias, phase, elastic displacement and tissue texture.

All fields are functions of a :class:`numpy.random.Generator` and a shape, so a seed fixes
them. Low-order fields are sums of separable cosine (DCT-II) basis images, the model SPM uses
for bias fields (Ashburner & Friston, NeuroImage 2005); elastic displacements are cubic
interpolations of a coarse random grid (Simard et al., ICDAR 2003, in spirit).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=32)
def _cosine_basis_1d(length: int, order: int) -> np.ndarray:
    """(order + 1, length) DCT-II basis vectors, the first one constant."""
    positions = (np.arange(length) + 0.5) / length
    basis = np.cos(np.pi * np.arange(order + 1)[:, None] * positions[None, :])
    basis.setflags(write=False)
    return basis


def low_order_field(
    rng: np.random.Generator, shape: tuple[int, int], order: int, amplitude: float
) -> np.ndarray:
    """Zero-mean smooth field: random DCT coefficients up to ``order`` per axis.

    Coefficients decay as 1 / (1 + kx + ky) so low frequencies dominate; the result is scaled
    to have standard deviation ``amplitude``.
    """
    rows = _cosine_basis_1d(shape[0], order)
    cols = _cosine_basis_1d(shape[1], order)
    ky, kx = np.meshgrid(np.arange(order + 1), np.arange(order + 1), indexing="ij")
    coefficients = rng.standard_normal((order + 1, order + 1)) / (1.0 + kx + ky)
    coefficients[0, 0] = 0.0
    field = rows.T @ coefficients @ cols
    scale = float(field.std())
    if scale < 1e-12:
        return np.zeros(shape, dtype=np.float32)
    return (field * (amplitude / scale)).astype(np.float32)


def bias_field(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Smooth positive multiplicative field exp(b), b a 3rd-order field of std ``strength``."""
    return np.exp(low_order_field(rng, shape, order=3, amplitude=strength)).astype(np.float32)


def smooth_phase(
    rng: np.random.Generator, shape: tuple[int, int], max_radians: float
) -> np.ndarray:
    """Random global phase plus a 2nd-order smooth phase of std ``max_radians / 2``."""
    offset = rng.uniform(-np.pi, np.pi)
    field = low_order_field(rng, shape, order=2, amplitude=max_radians / 2.0)
    return (field + offset).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _cubic_upsampling_matrix(length: int, grid: int) -> np.ndarray:
    """(length, grid) matrix: cubic-spline zoom of a ``grid``-point signal to ``length`` points."""
    identity = np.eye(grid)
    columns = [
        ndimage.zoom(identity[i], length / grid, order=3, mode="reflect", grid_mode=True)[:length]
        for i in range(grid)
    ]
    matrix = np.stack(columns, axis=1)
    matrix.setflags(write=False)
    return matrix


def coarse_grid_field(
    rng: np.random.Generator, shape: tuple[int, int], grid: int, amplitude: float
) -> np.ndarray:
    """Smooth field from a ``grid`` x ``grid`` Gaussian grid (std ``amplitude``), cubic-zoomed."""
    coarse = rng.standard_normal((grid, grid)) * amplitude
    field = (
        _cubic_upsampling_matrix(shape[0], grid)
        @ coarse
        @ _cubic_upsampling_matrix(shape[1], grid).T
    )
    return np.asarray(field, dtype=np.float32)


def texture_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with ``sigma_px``: a tissue texture pattern."""
    noise = rng.standard_normal(shape).astype(np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma_px, mode="wrap")
    smooth -= smooth.mean()
    return smooth / max(float(smooth.std()), 1e-6)
