"""Sampling masks as functions of (shape, acceleration, centre, seed) (issue 2, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from services.recon.errors import InputError
from services.recon.masks import (
    MASK_KINDS,
    effective_acceleration,
    equispaced_mask_1d,
    make_mask,
    mask_from_kspace,
    poisson_mask_2d,
    random_mask_1d,
)


def center_block(shape: tuple[int, int], center_fraction: float, kind: str) -> np.ndarray:
    """The region every mask of ``kind`` must sample fully (fastMRI / sigpy conventions)."""
    height, width = shape
    block = np.zeros(shape, dtype=bool)
    n_cols = round(width * center_fraction)
    start = (width - n_cols + 1) // 2
    if kind == "poisson2d":
        n_rows = round(height * center_fraction)
        rows = slice(int(height / 2 - n_rows / 2), int(height / 2 + n_rows / 2))
        block[rows, int(width / 2 - n_cols / 2) : int(width / 2 + n_cols / 2)] = True
    else:
        block[:, start : start + n_cols] = True
    return block


EQUISPACED_CASES = [
    (width, acceleration, center_fraction)
    for width in (64, 128, 256, 320, 368)
    for acceleration, center_fraction in ((4, 0.08), (6, 0.06), (8, 0.04))
    # 64 columns at 6x/8x are 11/8 columns; one column is 9-12.5%: 10% cannot be promised there
    if not (width == 64 and acceleration > 4)
]


@pytest.mark.parametrize(("width", "acceleration", "center_fraction"), EQUISPACED_CASES)
def test_equispaced_hits_requested_acceleration(
    width: int, acceleration: float, center_fraction: float
) -> None:
    """Within 10% for every seed (fastMRI adjusted spacing, random offset)."""
    for seed in range(30):
        mask = equispaced_mask_1d((16, width), acceleration, center_fraction, seed)
        assert effective_acceleration(mask) == pytest.approx(acceleration, rel=0.10)


@pytest.mark.parametrize("width", [64, 128, 320])
@pytest.mark.parametrize(("acceleration", "center_fraction"), [(4, 0.08), (8, 0.04)])
def test_random_mask_hits_acceleration_on_average(
    width: int, acceleration: float, center_fraction: float
) -> None:
    fractions = [
        random_mask_1d((8, width), acceleration, center_fraction, seed).mean()
        for seed in range(100)
    ]
    assert 1.0 / np.mean(fractions) == pytest.approx(acceleration, rel=0.05)


@pytest.mark.parametrize("acceleration", [2, 4, 8])
def test_poisson_hits_requested_acceleration(acceleration: float) -> None:
    mask = poisson_mask_2d((64, 64), acceleration, 0.1, seed=3)
    assert effective_acceleration(mask) == pytest.approx(acceleration, abs=0.1)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_masks_keep_the_centre(kind: str, shape: tuple[int, int]) -> None:
    for seed in range(5):
        mask = make_mask(kind, shape, 4, 0.1, seed)
        assert mask.dtype == bool and mask.shape == shape
        assert mask[center_block(shape, 0.1, kind)].all()
        assert mask[shape[0] // 2, shape[1] // 2]


@pytest.mark.parametrize("kind", ["random1d", "equispaced1d"])
def test_1d_masks_are_whole_columns(kind: str) -> None:
    mask = make_mask(kind, (40, 64), 4, 0.08, seed=2)
    assert (mask == mask[:1]).all()


def test_fastmri_centre_columns() -> None:
    """round(W * cf) columns starting at (W - n + 1) // 2, as fastMRI's calculate_center_mask."""
    mask = random_mask_1d((4, 64), 4, 0.125, seed=0)
    assert mask[0, 28:36].all()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_same_seed_same_mask_different_seed_different_mask(kind: str) -> None:
    first = make_mask(kind, (64, 64), 4, 0.08, seed=1)
    np.testing.assert_array_equal(first, make_mask(kind, (64, 64), 4, 0.08, seed=1))
    others = [make_mask(kind, (64, 64), 4, 0.08, seed=seed) for seed in range(2, 6)]
    assert any(not np.array_equal(first, other) for other in others)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_acceleration_one_samples_everything(kind: str) -> None:
    assert make_mask(kind, (32, 32), 1.0, 0.1, seed=0).all()


def test_make_mask_rejects_bad_parameters() -> None:
    with pytest.raises(InputError, match="unknown mask kind"):
        make_mask("radial", (32, 32), 4, 0.08, 0)
    with pytest.raises(InputError, match="acceleration"):
        make_mask("random1d", (32, 32), 0.5, 0.08, 0)
    with pytest.raises(InputError, match="center_fraction"):
        make_mask("equispaced1d", (32, 32), 8, 0.5, 0)
    with pytest.raises(InputError, match="shape"):
        make_mask("poisson2d", (32,), 4, 0.08, 0)  # type: ignore[arg-type]


def test_mask_from_kspace_any_coil_any_slice() -> None:
    kspace = np.zeros((2, 3, 8, 8), dtype=np.complex64)
    kspace[0, 1, 2, 3] = 1.0
    kspace[1, 2, 5, :] = 1j
    expected = np.zeros((8, 8), dtype=bool)
    expected[2, 3] = True
    expected[5, :] = True
    np.testing.assert_array_equal(mask_from_kspace(kspace), expected)
    np.testing.assert_array_equal(
        mask_from_kspace(kspace[0, 1]), expected & ~(np.arange(8) == 5)[:, None]
    )
    with pytest.raises(InputError):
        mask_from_kspace(np.ones(8))


def test_effective_acceleration() -> None:
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, ::4] = True
    assert effective_acceleration(mask) == 4.0
    with pytest.raises(InputError, match="nothing"):
        effective_acceleration(np.zeros((4, 4), dtype=bool))
