"""Measurement noise of undersampled k-space, and how much of it data consistency may let in.

Noise level: MR k-space is dominated by thermal noise far from the centre, where the image's
own signal has decayed (roughly as 1/|k|^2 for piecewise smooth images). The standard deviation
of each real/imaginary channel is estimated from the sampled locations in the corners of k-space
(outside the inscribed ellipse) by the median absolute deviation (MAD), which a few samples that
still carry signal do not move; cf. the noise estimation of Aja-Fernandez et al., "Noise
estimation in single- and multiple-coil magnetic resonance data based on statistical models",
MRI 27(10), 2009. With an orthonormal FFT the same standard deviation holds in the image domain.

Noise-aware data consistency (Wang et al., "Zero-shot image restoration using denoising diffusion
null-space model", DDNM+, ICLR 2023, section 3.3): at a diffusion level whose noise (per unit of
signal, ``sqrt((1 - abar) / abar)``) exceeds the measurement noise, the measured k-space replaces
the sample's and only the difference of the two noise levels is added, so the injected data carry
exactly the level's noise; at lower levels the measurements enter with the weight
``sqrt((1 - abar) / (abar sigma^2))`` < 1, so their noise never exceeds the level's. With
``sigma = 0`` both reduce to DiffuseRecon's exact replacement.
"""

from __future__ import annotations

import numpy as np

CORNER_RADIUS = 1.0
"""Normalised k-space radius (1 = the edge of the inscribed ellipse) beyond which samples count
as noise-dominated."""
MIN_CORNER_SAMPLES = 64
MAD_TO_STD = 1.0 / 0.6744897501960817
"""A zero-mean Gaussian's standard deviation over the median of its absolute value."""


def corner_region(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W): locations outside the ellipse inscribed in the k-space grid."""
    height, width = shape
    ky = (np.arange(height) - height // 2) / (height / 2)
    kx = (np.arange(width) - width // 2) / (width / 2)
    radius = np.hypot(ky[:, None], kx[None, :])
    return np.asarray(radius > CORNER_RADIUS)


def estimate_noise_std(kspace: np.ndarray, mask: np.ndarray) -> float | None:
    """Noise std per real/imaginary channel of centred k-space (H, W) or (C, H, W), or None.

    None when fewer than :data:`MIN_CORNER_SAMPLES` sampled locations (per coil) lie in the
    corners (a low-resolution or elliptical acquisition): the caller then keeps exact data
    consistency. Coils are pooled, which assumes equal noise per coil (after prewhitening).
    """
    data = np.asarray(kspace)
    if data.ndim == 2:
        data = data[None]
    sampled = np.broadcast_to(np.asarray(mask, dtype=bool), data.shape[-2:])
    corners = sampled & corner_region((data.shape[-2], data.shape[-1]))
    if int(corners.sum()) < MIN_CORNER_SAMPLES:
        return None
    values = data[:, corners]
    channels = np.concatenate([values.real.ravel(), values.imag.ravel()])
    return float(np.median(np.abs(channels)) * MAD_TO_STD)


def level_noise_var(abar: float) -> float:
    """Noise variance per unit of signal at a diffusion level: ``(1 - abar) / abar``."""
    return (1.0 - abar) / abar if abar > 0 else float("inf")


def data_weight(abar: float, noise_std: float) -> float:
    """Weight of the measurements in data consistency at a level (DDNM+'s lambda_t)."""
    measured_var = noise_std**2
    if measured_var <= level_noise_var(abar):
        return 1.0
    return float(np.sqrt(level_noise_var(abar) / measured_var))


def added_noise_std(abar: float, noise_std: float) -> float:
    """Std of the noise added to ``sqrt(abar) y`` so the injected data carry the level's noise."""
    return float(np.sqrt(max(0.0, (1.0 - abar) - abar * noise_std**2)))
