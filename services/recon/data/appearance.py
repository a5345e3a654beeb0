"""Scanner-appearance randomisation for classifier training (domain randomisation).

Real scans differ from the synthetic slice bank in ways a lesion label does not depend on: the
scanner's point-spread (a blurrier or an edge-enhanced image), fine tissue texture and thermal
noise. Domain randomisation (Tobin et al., IROS 2017; SynthSeg, Billot et al., MedIA 2023, does
it for contrast) draws such nuisances at random during training, so that a decision has to rest
on what they do not change. Every image of a healthy/lesion pair gets the same draw, so the pair
still differs only by the lesion.

A draw: a point-spread change (none, a Gaussian blur, or unsharp-mask sharpening), a
multiplicative fine texture, then Rician noise at a random SNR (``mean head magnitude / sigma``,
as :func:`services.recon.physics.simulate_kspace` defines it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from services.recon.data.fields import texture_field
from services.recon.metrics import foreground_mask

Range = tuple[float, float]


@dataclass(frozen=True)
class AppearanceRanges:
    """Ranges the nuisances are drawn from (pixels at the slice's own size)."""

    blur_sigma_px: Range = (0.3, 1.2)
    sharpen_amount: Range = (0.3, 1.0)
    sharpen_sigma_px: Range = (0.7, 1.5)
    texture_strength: Range = (0.0, 0.15)
    texture_sigma_px: Range = (0.6, 1.5)
    snr: Range = (10.0, 60.0)


DEFAULT_RANGES = AppearanceRanges()


def randomise_appearance(
    magnitudes: np.ndarray, rng: np.random.Generator, ranges: AppearanceRanges = DEFAULT_RANGES
) -> np.ndarray:
    """One random appearance applied to every magnitude image of ``(K, H, W)``; float32, >= 0.

    The SNR's noise level comes from the first image's head, and the same noise is added to
    all, so pixels that were equal stay equal.
    """
    images = np.asarray(magnitudes, dtype=np.float64)
    spread = int(rng.integers(3))
    if spread == 1:
        sigma = rng.uniform(*ranges.blur_sigma_px)
        images = np.stack([ndimage.gaussian_filter(image, sigma) for image in images])
    elif spread == 2:
        amount = rng.uniform(*ranges.sharpen_amount)
        sigma = rng.uniform(*ranges.sharpen_sigma_px)
        blurred = np.stack([ndimage.gaussian_filter(image, sigma) for image in images])
        images = np.maximum(images + amount * (images - blurred), 0.0)
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    texture = texture_field(rng, shape, rng.uniform(*ranges.texture_sigma_px))
    images = images * np.maximum(1.0 + rng.uniform(*ranges.texture_strength) * texture, 0.0)
    head = foreground_mask(images[0])
    level = float(images[0][head].mean()) if head.any() else float(images[0].mean())
    sigma_noise = level / rng.uniform(*ranges.snr)
    real, imaginary = rng.standard_normal((2, *shape)) * sigma_noise
    noisy = np.sqrt((images + real) ** 2 + imaginary**2)
    return noisy.astype(np.float32)
