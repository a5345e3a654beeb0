"""Quality, uncertainty and detection metrics against hand-computed values (issue 2, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from services.recon.errors import InputError
from services.recon.metrics import (
    auroc,
    ause,
    calibration_fraction,
    dice,
    foreground_mask,
    mse,
    nmse,
    pooled_auroc_interval,
    psnr,
    psnr_in_mask,
    sparsification_curves,
    spearman,
    ssim,
)


def test_nmse_and_mse_hand_values() -> None:
    gt = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 2.0])
    assert mse(gt, pred) == pytest.approx(1.0)
    assert nmse(gt, pred) == pytest.approx(4.0 / 30.0)
    assert nmse(gt.astype(complex), pred + 0j) == pytest.approx(4.0 / 30.0)
    with pytest.raises(InputError, match="all zero"):
        nmse(np.zeros(3), np.ones(3))
    with pytest.raises(InputError, match="shapes differ"):
        nmse(gt, pred[:3])


def test_psnr_hand_values() -> None:
    gt = np.array([[0.0, 2.0], [1.0, 1.0]])
    pred = gt + np.array([[0.1, -0.1], [0.1, -0.1]])
    # MSE = 0.01, maxval = 2 -> 10 log10(4 / 0.01)
    assert psnr(gt, pred) == pytest.approx(10 * np.log10(400.0))
    assert psnr(gt, pred, maxval=1.0) == pytest.approx(20.0)
    assert psnr(gt, gt) == float("inf")
    assert psnr(gt + 0j, pred * np.exp(0.7j)) == pytest.approx(psnr(gt, np.abs(pred)))


def test_ssim_matches_skimage_per_slice_with_volume_maxval() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.0, 1.0, (3, 32, 32))
    gt[1] *= 0.5
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    expected = np.mean(
        [structural_similarity(g, p, data_range=gt.max()) for g, p in zip(gt, pred, strict=True)]
    )
    assert ssim(gt, pred) == pytest.approx(expected)
    assert ssim(gt[0], pred[0]) == pytest.approx(
        structural_similarity(gt[0], pred[0], data_range=gt[0].max())
    )
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(gt[0] + 0j, gt[0] * np.exp(1j)) == pytest.approx(1.0)


def disc(radius: float, size: int = 32, centre: float = 15.5) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (x - centre) ** 2 + (y - centre) ** 2 <= radius**2


def test_foreground_fills_holes_erodes_two_pixels_and_ignores_background() -> None:
    rng = np.random.default_rng(1)
    reference = np.where(disc(10), 1.0, 0.0)
    reference[disc(3)] = 0.0  # a dark "ventricle" inside the head
    reference += 0.02 * rng.uniform(size=reference.shape)  # background noise below 10% of p99
    foreground = foreground_mask(reference)
    assert foreground.dtype == bool
    np.testing.assert_array_equal(foreground, disc(8))  # hole filled, 10 px disc eroded by 2


def test_foreground_threshold_is_relative_to_the_99th_percentile() -> None:
    reference = np.zeros((32, 32))
    reference[4:28, 4:28] = 1.0
    reference[8:24, 8:24] = 0.05  # below 0.1 x p99 but enclosed: filled
    reference[16, 16] = 1000.0  # one hot pixel does not move the 99th percentile
    foreground = foreground_mask(reference)
    expected = np.zeros((32, 32), dtype=bool)
    expected[6:26, 6:26] = True
    np.testing.assert_array_equal(foreground, expected)


def test_foreground_is_per_slice() -> None:
    volume = np.stack([np.where(disc(10), 1.0, 0.0), np.where(disc(6), 100.0, 0.0)])
    foreground = foreground_mask(volume)
    np.testing.assert_array_equal(foreground[0], disc(8))
    np.testing.assert_array_equal(foreground[1], disc(4))
    with pytest.raises(InputError):
        foreground_mask(np.ones(5))


def test_psnr_in_mask_hand_values() -> None:
    gt = np.array([[4.0, 1.0], [1.0, 1.0]])
    pred = np.array([[4.0, 1.0], [0.0, 1.0]])
    inside = np.array([[True, True], [False, False]])
    assert psnr_in_mask(gt, pred, inside) == float("inf")
    # pixels (1,0), (1,1): errors 1 and 0 -> MSE 0.5; maxval = gt.max() = 4
    assert psnr_in_mask(gt, pred, ~inside) == pytest.approx(10 * np.log10(16 / 0.5))
    with pytest.raises(InputError, match="no pixels"):
        psnr_in_mask(gt, pred, np.zeros((2, 2), bool))


def test_spearman_hand_values() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks (1..5) vs (2,1,4,3,5): d^2 sum = 4 -> 1 - 6*4/(5*24) = 0.8
    assert spearman(a, np.array([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)


def test_ause_hand_value() -> None:
    """errors 1..4, std ordering them backwards, four fractions (0, .25, .5, .75 removed):
    oracle curve 2.5, 2, 1.5, 1 and std curve 2.5, 3, 3.5, 4 (each / 2.5), so
    AUSE = 0.25 * (0 + 0.4 + 0.8 + 1.2) = 0.6."""
    errors = np.array([1.0, 2.0, 3.0, 4.0])
    fractions, by_std, oracle = sparsification_curves(errors[::-1], errors, num_fractions=4)
    np.testing.assert_allclose(fractions, [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(oracle, [1.0, 0.8, 0.6, 0.4])
    np.testing.assert_allclose(by_std, [1.0, 1.2, 1.4, 1.6])
    assert ause(errors[::-1], errors, num_fractions=4) == pytest.approx(0.6)
    assert ause(errors, errors, num_fractions=4) == pytest.approx(0.0)


def test_ause_orders_informative_above_random_uncertainty() -> None:
    rng = np.random.default_rng(2)
    std = rng.uniform(0.1, 1.0, 4000)
    errors = np.abs(rng.normal(0.0, std))
    informative = ause(std, errors)
    uninformative = ause(rng.permutation(std), errors)
    assert 0.0 < informative < uninformative


def test_calibration_fraction() -> None:
    assert calibration_fraction(np.array([0.5, 1.5, 2.5, -3.0]), np.ones(4)) == 0.5
    assert calibration_fraction(np.array([0.5, 1.5]), np.ones(2), k=1.0) == 0.5
    rng = np.random.default_rng(3)
    std = rng.uniform(0.5, 2.0, 20000)
    within = calibration_fraction(rng.normal(0.0, std), std, k=2.0)
    assert within == pytest.approx(0.9545, abs=0.01)


def test_dice_hand_values() -> None:
    pred = np.array([1, 1, 0, 0], dtype=bool)
    true = np.array([1, 0, 1, 0], dtype=bool)
    assert dice(pred, true) == pytest.approx(0.5)
    assert dice(pred, pred) == 1.0
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice(pred, ~pred) == 0.0


def test_auroc_hand_values() -> None:
    # 4 positive/negative pairs, 3 ordered correctly -> 0.75
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # a tie counts one half
    with pytest.raises(InputError, match="both"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_pooled_auroc_interval_brackets_the_pooled_value_and_collapses_for_identical_slices() -> (
    None
):
    rng = np.random.default_rng(0)
    labels = [rng.uniform(size=200) < 0.2 for _ in range(6)]
    scores = [rng.normal(size=200) + 1.5 * y * (k % 3) for k, y in enumerate(labels)]
    pooled = auroc(np.concatenate(scores), np.concatenate(labels))
    low, high = pooled_auroc_interval(scores, labels, rounds=500)
    assert low < pooled < high and high - low > 0.02  # slices differ: a real interval
    same = pooled_auroc_interval([scores[1]] * 4, [labels[1]] * 4, rounds=50)
    assert same == pytest.approx((auroc(scores[1], labels[1]),) * 2)
    with pytest.raises(InputError, match="level"):
        pooled_auroc_interval(scores, labels, level=1.0)
