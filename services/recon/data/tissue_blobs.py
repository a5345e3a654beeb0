"""Healthy look-alikes: focal shapes at an intensity the brain already has.

Real anatomy holds focal structures that group-average templates smooth away: deep nuclei,
vessels, partial-volume islands, cortex cut obliquely. A classifier that has only seen template
anatomy can learn "a focal shape is a lesion" and then fire on real scans. Domain randomisation
in the spirit of SynthSeg (Billot et al., Medical Image Analysis 2023) draws such shapes at
random: lesion-like outlines (:mod:`services.recon.data.lesions`) filled with an intensity taken
from the slice's own brain, painted identically into both images of a healthy/lesion pair and
kept clear of the lesion, so the pair still differs only by the lesion and a decision has to
rest on what makes a lesion, not on its outline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from services.recon.data.lesions import (
    MIN_BRAIN_PIXELS,
    REFERENCE_PIXELS,
    LesionFamily,
    brain_region,
    core_weight,
    head_mask,
    sample_lesion_params,
)

Range = tuple[float, float]

BLOB_SHAPES = LesionFamily(
    name="tissue-blob",
    outlines=("perturbed-ellipse", "lobulated"),
    hyper_contrast=(1.0, 1.0),
    hypo_contrast=(1.0, 1.0),
    hyper_probability=0.5,
    roughness=(0.05, 0.35),
    texture_strength=(0.0, 0.0),
    texture_correlation_px=(1.0, 1.0),
    oedema_probability=0.0,
    oedema_width=(0.0, 0.0),
    oedema_strength=(0.0, 0.0),
    necrotic_probability=0.0,
    edge_px=(0.6, 1.5),
    min_area_px=6.0,
    max_brain_fraction=0.03,
)
"""Outlines, sizes and edges of the blobs; only the shape fields are used (not the contrasts)."""


@dataclass(frozen=True)
class BlobRanges:
    """How many blobs, which brain-intensity quantiles fill them, their distance from a lesion."""

    count: tuple[int, int] = (1, 4)
    quantile: Range = (0.05, 0.95)
    clearance_px: int = 3


DEFAULT_BLOBS = BlobRanges()


def paint_tissue_blobs(
    magnitudes: np.ndarray,
    keep_clear: np.ndarray,
    rng: np.random.Generator,
    ranges: BlobRanges = DEFAULT_BLOBS,
) -> np.ndarray:
    """``(K, H, W)`` magnitudes with the same random blobs painted into each; float32.

    Shapes and intensities come from the first image (the healthy one); ``keep_clear`` (``(H,
    W)`` bool, e.g. the lesion mask) and ``clearance_px`` around it stay untouched. A slice with
    too little brain is returned unchanged.
    """
    images = np.asarray(magnitudes, dtype=np.float64).copy()
    first = images[0]
    brain = brain_region(first, head_mask(first))
    scale = brain.size / REFERENCE_PIXELS
    if brain.sum() < MIN_BRAIN_PIXELS * scale:
        return images.astype(np.float32)
    clear = np.asarray(keep_clear, dtype=bool)
    if clear.any():
        clear = ndimage.binary_dilation(clear, iterations=ranges.clearance_px)
    allowed = brain & ~clear
    if not allowed.any():
        return images.astype(np.float32)
    brain_values = first[brain]
    for _ in range(int(rng.integers(ranges.count[0], ranges.count[1] + 1))):
        params = sample_lesion_params(rng, BLOB_SHAPES, allowed, int(rng.integers(2**31)))
        level = float(np.quantile(brain_values, rng.uniform(*ranges.quantile)))
        core = core_weight(params, allowed)
        top, bottom, left, right = core.window
        weight = core.weight * allowed[top:bottom, left:right]
        local = images[:, top:bottom, left:right]
        images[:, top:bottom, left:right] = (1.0 - weight) * local + weight * level
    return images.astype(np.float32)
