"""k-space sampling masks, each a pure function of (shape, acceleration, centre, seed).

1-D column masks follow fastMRI ``fastmri/data/subsample.py`` (Zbontar et al.,
arXiv:1811.08839): the last axis is phase encode, ``round(W * center_fraction)`` central columns
are always sampled, and the remaining columns are chosen so that the overall acceleration is the
requested one. The 2-D mask is variable-density Poisson disc (sigpy.mri.poisson; Bridson,
SIGGRAPH sketches 2007) with a fully sampled square-ish calibration region. Randomness comes
from ``numpy.random.default_rng(seed)`` (sigpy's own seeded generator for Poisson), so masks
are reproducible but not bit-identical to fastMRI's RandomState draws.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.recon.errors import InputError

MASK_KINDS = ("random1d", "equispaced1d", "poisson2d")

MaskFunction = Callable[[tuple[int, int], float, float, int], np.ndarray]


def _check_parameters(shape: tuple[int, ...], acceleration: float, center_fraction: float) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"mask shape must be (H, W) with positive sizes, got {tuple(shape)}")
    if not acceleration >= 1.0:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 <= center_fraction <= 1.0:
        raise InputError(f"center_fraction must be in [0, 1], got {center_fraction}")


def _center_columns(num_cols: int, center_fraction: float, acceleration: float) -> slice:
    """fastMRI's fully sampled centre: ``round(W * cf)`` columns from ``(W - n + 1) // 2``."""
    num_low_freqs = round(num_cols * center_fraction)
    if num_low_freqs > num_cols / acceleration:
        raise InputError(
            f"center_fraction {center_fraction} alone samples {num_low_freqs} of {num_cols} "
            f"columns, more than acceleration {acceleration} allows"
        )
    start = (num_cols - num_low_freqs + 1) // 2
    return slice(start, start + num_low_freqs)


def random_mask_1d(
    shape: tuple[int, int], acceleration: float, center_fraction: float, seed: int
) -> np.ndarray:
    """fastMRI ``RandomMaskFunc``: bool (H, W), columns sampled independently at random.

    Non-central columns are kept with probability ``(W / acc - n_c) / (W - n_c)`` so that the
    acceleration is ``acc`` on average over seeds.
    """
    _check_parameters(shape, acceleration, center_fraction)
    height, num_cols = shape
    center = _center_columns(num_cols, center_fraction, acceleration)
    num_low_freqs = center.stop - center.start
    columns = np.zeros(num_cols, dtype=bool)
    if num_cols > num_low_freqs:
        probability = (num_cols / acceleration - num_low_freqs) / (num_cols - num_low_freqs)
        columns = np.random.default_rng(seed).uniform(size=num_cols) < probability
    columns[center] = True
    return np.broadcast_to(columns, (height, num_cols)).copy()


def equispaced_mask_1d(
    shape: tuple[int, int], acceleration: float, center_fraction: float, seed: int
) -> np.ndarray:
    """fastMRI ``EquispacedMaskFractionFunc``: bool (H, W), equispaced columns plus the centre.

    The spacing is adjusted for the centre, ``acc * (n_c - W) / (n_c * acc - W)``, so that the
    total acceleration is the requested one; the offset is drawn from ``[0, round(spacing))``.
    Unlike fastMRI, positions run up to the last column (fastMRI stops at ``W - 1``), so that
    acceleration 1 samples every column.
    """
    _check_parameters(shape, acceleration, center_fraction)
    height, num_cols = shape
    center = _center_columns(num_cols, center_fraction, acceleration)
    num_low_freqs = center.stop - center.start
    columns = np.zeros(num_cols, dtype=bool)
    if num_low_freqs * acceleration < num_cols:
        spacing = (
            acceleration * (num_low_freqs - num_cols) / (num_low_freqs * acceleration - num_cols)
        )
        offset = int(np.random.default_rng(seed).integers(0, max(round(spacing), 1)))
        samples = np.around(np.arange(offset, num_cols, spacing)).astype(np.int64)
        columns[samples[samples < num_cols]] = True
    columns[center] = True
    return np.broadcast_to(columns, (height, num_cols)).copy()


def poisson_mask_2d(
    shape: tuple[int, int], acceleration: float, center_fraction: float, seed: int
) -> np.ndarray:
    """Variable-density Poisson-disc mask (sigpy.mri.poisson), bool (H, W).

    The calibration region is ``round(H * cf) x round(W * cf)`` at the centre, fully sampled.
    Corners are not cropped, so every acceleration >= 1 is reachable; sigpy searches the
    density slope until the acceleration is within 0.1 of the request.
    """
    _check_parameters(shape, acceleration, center_fraction)
    height, width = shape
    calib = (round(height * center_fraction), round(width * center_fraction))
    if calib[0] * calib[1] > height * width / acceleration:
        raise InputError(
            f"center_fraction {center_fraction} calibration region is larger than acceleration "
            f"{acceleration} allows"
        )
    if acceleration == 1.0:
        return np.ones(shape, dtype=bool)
    import sigpy.mri  # deferred: sigpy pulls in scipy.signal, seconds of start-up

    try:
        mask = sigpy.mri.poisson(
            (height, width),
            acceleration,
            calib=calib,
            dtype=np.float32,
            crop_corner=False,
            seed=int(seed),
        )
    except ValueError as error:
        raise InputError(f"cannot make a Poisson-disc mask: {error}") from error
    return np.asarray(mask > 0)


_MASK_FUNCTIONS: dict[str, MaskFunction] = {
    "random1d": random_mask_1d,
    "equispaced1d": equispaced_mask_1d,
    "poisson2d": poisson_mask_2d,
}


def make_mask(
    kind: str,
    shape: tuple[int, int],
    acceleration: float,
    center_fraction: float,
    seed: int,
) -> np.ndarray:
    """Build a bool (H, W) mask of ``kind`` (one of :data:`MASK_KINDS`)."""
    if kind not in _MASK_FUNCTIONS:
        raise InputError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    if len(shape) != 2:
        raise InputError(f"mask shape must be (H, W), got {tuple(shape)}")
    height, width = shape
    return _MASK_FUNCTIONS[kind]((int(height), int(width)), acceleration, center_fraction, seed)


def mask_from_kspace(kspace: np.ndarray) -> np.ndarray:
    """Sampled locations of k-space shaped (..., H, W): any nonzero over all leading axes."""
    kspace = np.asarray(kspace)
    if kspace.ndim < 2:
        raise InputError(f"k-space must have at least two axes (H, W), got shape {kspace.shape}")
    nonzero = kspace != 0
    return np.asarray(nonzero.reshape(-1, *kspace.shape[-2:]).any(axis=0))


def effective_acceleration(mask: np.ndarray) -> float:
    """Acceleration actually achieved by ``mask``: number of locations / number sampled."""
    mask = np.asarray(mask, dtype=bool)
    sampled = int(mask.sum())
    if sampled == 0:
        raise InputError("mask samples nothing")
    return mask.size / sampled
