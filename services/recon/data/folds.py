"""Cortical folds for tissue maps: thin CSF-filled sulci carved into the cortex.

The templates the prior trains on are averages (or, for MNI 2009a, an average sharpened by
non-linear registration), so their cortex is a smooth grey ribbon, while a single subject's
slice shows sulci: thin CSF lines between gyri, about 1-2 mm wide and 7-12 mm apart. Real scans
sit in the evaluation split only, so the folds are synthesised. In the spirit of SynthSeg's
domain randomisation (Billot et al., Medical Image Analysis 2023), the sulci are the zero set
of a band-pass Gaussian random field (a maze of curved lines with a random spacing), kept to
the cortex (grey matter within a random depth of the brain's outer boundary), and each line
turns the grey matter it crosses into CSF with partial-volume weights.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from services.recon.data.contrast import CSF, GM, WM

LINE_SPACING_MM = (14.0, 24.0)
"""Wavelength range of the band-pass field; its zero lines are about half of it apart."""
HALF_WIDTH_MM = (0.5, 1.0)
"""Range of the Gaussian half-width of one sulcus, in mm."""
CORTEX_DEPTH_MM = (10.0, 20.0)
"""Range of the depth below the brain's outer boundary where sulci fade out."""


def sulcal_lines(rng: np.random.Generator, shape: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """0..1 weight (H, W) of thin curved lines: the zero set of a band-pass random field.

    The distance to the zero set is approximated to first order by ``|f| / |grad f|``.
    """
    spacing_px = rng.uniform(*LINE_SPACING_MM) / pixel_mm
    sigma = spacing_px / 4.0
    noise = rng.standard_normal(shape)
    band = ndimage.gaussian_filter(noise, sigma, mode="wrap") - ndimage.gaussian_filter(
        noise, 2.0 * sigma, mode="wrap"
    )
    grad_rows, grad_cols = np.gradient(band)
    distance_mm = np.abs(band) / np.maximum(np.hypot(grad_rows, grad_cols), 1e-9) * pixel_mm
    half_width_mm = rng.uniform(*HALF_WIDTH_MM)
    return np.exp(-((distance_mm / half_width_mm) ** 2)).astype(np.float32)


def cortex_weight(probabilities: np.ndarray, pixel_mm: float, depth_mm: float) -> np.ndarray:
    """1 near the brain's outer boundary, fading to 0 at ``1.5 * depth_mm`` inside it."""
    brain = (probabilities[..., GM] + probabilities[..., WM]) > 0.5
    depth = ndimage.distance_transform_edt(brain) * pixel_mm
    return np.clip(1.5 - depth / depth_mm, 0.0, 1.0).astype(np.float32)


def with_cortical_folds(
    probabilities: np.ndarray, rng: np.random.Generator, pixel_mm: float
) -> np.ndarray:
    """Tissue probabilities (H, W, C) with sulci: grey matter on the lines moved to CSF.

    The class sum per pixel is unchanged, so the result stays a partial-volume mixture.
    """
    shape = (probabilities.shape[0], probabilities.shape[1])
    lines = sulcal_lines(rng, shape, pixel_mm)
    cortex = cortex_weight(probabilities, pixel_mm, rng.uniform(*CORTEX_DEPTH_MM))
    strength = rng.uniform(0.5, 1.0)
    moved = strength * lines * cortex * probabilities[..., GM]
    folded = probabilities.copy()
    folded[..., GM] -= moved
    folded[..., CSF] += moved
    return folded
