"""Image-quality, uncertainty and detection metrics.

Image quality follows fastMRI (``fastmri/evaluate.py``; Zbontar et al., arXiv:1811.08839):
NMSE on the values as given, PSNR and SSIM on magnitudes with ``maxval = gt.max()``.
Uncertainty quality: Spearman rank correlation of std vs error, the area under the
sparsification error curve (AUSE; Ilg et al., "Uncertainty Estimates and Multi-Hypotheses
Networks for Optical Flow", ECCV 2018) and the fraction of errors within ``k`` std.
All functions return Python floats (or bool arrays for masks) and accept numpy arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from services.recon.errors import InputError

FOREGROUND_THRESHOLD = 0.1
FOREGROUND_PERCENTILE = 99.0
FOREGROUND_EROSION_PIXELS = 2


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def _magnitude(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return np.abs(x) if np.iscomplexobj(x) else x.astype(np.float64, copy=False)


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error ``mean(|gt - pred|^2)``."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    _same_shape(gt, pred, "mse")
    return float(np.mean(np.abs(gt - pred) ** 2))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ``||gt - pred||^2 / ||gt||^2`` (fastMRI), on the values as given."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    _same_shape(gt, pred, "nmse")
    reference = float(np.linalg.norm(gt)) ** 2
    if reference == 0.0:
        raise InputError("nmse: ground truth is all zero")
    return float(np.linalg.norm(gt - pred)) ** 2 / reference


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """PSNR ``10 log10(maxval^2 / MSE)`` on magnitudes, ``maxval`` defaults to ``gt.max()``."""
    gt_mag, pred_mag = _magnitude(gt), _magnitude(pred)
    _same_shape(gt_mag, pred_mag, "psnr")
    peak = float(gt_mag.max()) if maxval is None else float(maxval)
    error = mse(gt_mag, pred_mag)
    if error == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / error))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Mean SSIM over slices (fastMRI): skimage defaults, ``data_range = maxval``.

    Accepts (H, W) or (S, H, W); complex inputs are compared as magnitudes. ``maxval`` defaults
    to the maximum of the whole ground-truth volume, as in fastMRI.
    """
    gt_mag, pred_mag = _magnitude(gt), _magnitude(pred)
    _same_shape(gt_mag, pred_mag, "ssim")
    if gt_mag.ndim == 2:
        gt_mag, pred_mag = gt_mag[None], pred_mag[None]
    if gt_mag.ndim != 3:
        raise InputError(f"ssim expects (H, W) or (S, H, W), got shape {gt_mag.shape}")
    peak = float(gt_mag.max()) if maxval is None else float(maxval)
    values = [
        structural_similarity(gt_slice, pred_slice, data_range=peak)
        for gt_slice, pred_slice in zip(gt_mag, pred_mag, strict=True)
    ]
    return float(np.mean(values))


def _erosion_disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return np.asarray(offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2)


def foreground_mask(reference: np.ndarray) -> np.ndarray:
    """Foreground ("inside the head", design.md), bool, same shape as ``reference``.

    Per slice: ``|reference| > 0.1 * percentile_99(|reference|)``, holes filled, then eroded by
    2 pixels (a Euclidean disk of radius 2; pixels on the image border count as outside).
    Accepts (H, W) or (S, H, W).
    """
    magnitude = _magnitude(reference)
    if magnitude.ndim == 3:
        return np.stack([foreground_mask(one_slice) for one_slice in magnitude])
    if magnitude.ndim != 2:
        raise InputError(f"foreground_mask expects (H, W) or (S, H, W), got {magnitude.shape}")
    if not np.isfinite(magnitude).all():
        raise InputError("foreground_mask: reference contains NaN or infinite values")
    threshold = FOREGROUND_THRESHOLD * np.percentile(magnitude, FOREGROUND_PERCENTILE)
    inside = ndimage.binary_fill_holes(magnitude > threshold)
    eroded = ndimage.binary_erosion(
        inside, structure=_erosion_disk(FOREGROUND_EROSION_PIXELS), border_value=0
    )
    return np.asarray(eroded, dtype=bool)


def psnr_in_mask(
    gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, maxval: float | None = None
) -> float:
    """PSNR with the MSE taken over ``mask`` pixels only; ``maxval`` defaults to ``gt.max()``."""
    gt_mag, pred_mag = _magnitude(gt), _magnitude(pred)
    mask = np.asarray(mask, dtype=bool)
    _same_shape(gt_mag, pred_mag, "psnr_in_mask")
    _same_shape(gt_mag, mask, "psnr_in_mask mask")
    if not mask.any():
        raise InputError("psnr_in_mask: mask selects no pixels")
    peak = float(gt_mag.max()) if maxval is None else float(maxval)
    error = float(np.mean((gt_mag[mask] - pred_mag[mask]) ** 2))
    if error == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / error))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the flattened inputs (e.g. std vs absolute error)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    _same_shape(a, b, "spearman")
    if a.size < 2:
        raise InputError("spearman needs at least two values")
    from scipy import stats  # deferred: scipy.stats costs seconds of start-up

    return float(stats.spearmanr(a, b).statistic)


def sparsification_curves(
    std: np.ndarray, abs_error: np.ndarray, num_fractions: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparsification curves (Ilg et al., ECCV 2018): fractions, by-uncertainty, oracle.

    For each removed fraction ``f`` in ``0, 1/n, ..., (n-1)/n`` the pixels with the largest
    ``std`` (resp. the largest ``abs_error``, the oracle) are removed and the mean absolute
    error of the rest is recorded, normalised by the mean absolute error of all pixels.
    """
    std, abs_error = np.asarray(std, dtype=np.float64).ravel(), np.asarray(abs_error).ravel()
    _same_shape(std, abs_error, "sparsification")
    abs_error = np.abs(abs_error.astype(np.float64))
    total = abs_error.mean() if abs_error.size else 0.0
    if total == 0.0:
        raise InputError("sparsification: absolute error is zero everywhere (or empty)")
    fractions = np.arange(num_fractions) / num_fractions
    kept = np.maximum(np.round((1.0 - fractions) * abs_error.size).astype(np.int64), 1)

    def curve(order_key: np.ndarray) -> np.ndarray:
        ascending = abs_error[np.argsort(order_key, kind="stable")]
        cumulative = np.cumsum(ascending)
        return cumulative[kept - 1] / kept / total

    return fractions, curve(std), curve(abs_error)


def ause(std: np.ndarray, abs_error: np.ndarray, num_fractions: int = 100) -> float:
    """Area under the sparsification error curve (Ilg et al., ECCV 2018).

    The area between the std-ordered and the oracle (error-ordered) sparsification curves over
    the removed fraction in [0, 1), both normalised to 1 at fraction 0. Zero means the std
    orders pixels exactly like the error does; larger is worse.
    """
    _, by_std, oracle = sparsification_curves(std, abs_error, num_fractions)
    step = 1.0 / num_fractions
    return float(np.sum(by_std - oracle) * step)


def calibration_fraction(abs_error: np.ndarray, std: np.ndarray, k: float = 2.0) -> float:
    """Fraction of pixels whose absolute error is within ``k`` standard deviations.

    For Gaussian errors with the stated std this is about 0.683 (k=1), 0.954 (k=2).
    """
    abs_error, std = np.abs(np.asarray(abs_error)), np.asarray(std)
    _same_shape(abs_error, std, "calibration_fraction")
    if abs_error.size == 0:
        raise InputError("calibration_fraction: no pixels")
    return float(np.mean(abs_error <= k * std))


def pooled_auroc_interval(
    scores: list[np.ndarray],
    labels: list[np.ndarray],
    level: float = 0.95,
    rounds: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled :func:`auroc` over groups (e.g. slices).

    Pixels of one slice are not independent, so the slices are resampled with replacement
    (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993). The Mann-Whitney count of
    every (positives of group i, negatives of group j) pair is computed once; a resample with
    group counts ``w`` then has AUROC ``w U w / ((w . P) (w . N))``, exact and cheap.
    """
    if len(scores) != len(labels) or not scores:
        raise InputError("pooled_auroc_interval needs one label array per score array")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level}")
    groups = [
        (np.asarray(x, np.float64).ravel(), np.asarray(y).ravel().astype(bool))
        for x, y in zip(scores, labels, strict=True)
    ]
    positives = [x[y] for x, y in groups]
    negatives = [np.sort(x[~y]) for x, y in groups]
    wins = np.array(
        [
            [
                (np.searchsorted(n, p, "left") + np.searchsorted(n, p, "right")).sum() / 2.0
                for n in negatives
            ]
            for p in positives
        ]
    )
    counts_p = np.array([p.size for p in positives], np.float64)
    counts_n = np.array([n.size for n in negatives], np.float64)
    draws = (
        np.random.default_rng(seed)
        .multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=rounds)
        .astype(np.float64)
    )
    pairs = (draws @ counts_p) * (draws @ counts_n)
    usable = pairs > 0
    if not usable.any():
        raise InputError("auroc needs both positive and negative labels")
    values = np.einsum("ri,ij,rj->r", draws[usable], wins, draws[usable]) / pairs[usable]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice overlap ``2 |A and B| / (|A| + |B|)``; 1.0 when both masks are empty."""
    pred_mask, true_mask = np.asarray(pred_mask, bool), np.asarray(true_mask, bool)
    _same_shape(pred_mask, true_mask, "dice")
    total = int(pred_mask.sum()) + int(true_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(pred_mask, true_mask).sum()) / total


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    _same_shape(scores, labels, "auroc")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise InputError("auroc needs both positive and negative labels")
    from scipy import stats

    ranks = stats.rankdata(scores)
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
