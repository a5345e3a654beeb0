"""Measurement-noise estimation from k-space corners and the noise-aware data weight (DDNM+)."""

from __future__ import annotations

import numpy as np
import pytest

from services.recon import physics
from services.recon.data.sample_data import template_slices
from services.recon.masks import make_mask
from services.recon.metrics import foreground_mask
from services.recon.noise import (
    added_noise_std,
    corner_region,
    data_weight,
    estimate_noise_std,
    level_noise_var,
)


def complex_noise(shape: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def test_corners_lie_outside_the_inscribed_ellipse() -> None:
    corners = corner_region((64, 96))
    assert not corners[32, :].any() and not corners[:, 48].any()
    assert corners[0, 0] and corners[-1, -1] and corners[0, -1]
    assert corners.mean() == pytest.approx(1 - np.pi / 4, abs=0.02)


def test_pure_noise_gives_its_standard_deviation() -> None:
    mask = make_mask("random1d", (128, 128), 4.0, 0.08, seed=3)
    estimate = estimate_noise_std(complex_noise((128, 128), 0.7, seed=0), mask)
    assert estimate == pytest.approx(0.7, rel=0.05)


def test_noise_under_a_head_image_is_found_and_coils_are_pooled() -> None:
    image = template_slices(128)[0]
    sigma = float(image[foreground_mask(image)].mean()) / 40.0  # simulate_kspace's SNR
    kspace = physics.simulate_kspace(image, snr=40.0, seed=5)
    mask = make_mask("poisson2d", image.shape, 4.0, 0.08, seed=5)
    assert estimate_noise_std(kspace * mask, mask) == pytest.approx(sigma, rel=0.15)
    coils = np.stack([kspace, complex_noise(kspace.shape, sigma, seed=6)])
    assert estimate_noise_std(coils * mask, mask) == pytest.approx(sigma, rel=0.15)


def test_too_few_corner_samples_give_none() -> None:
    low_resolution = np.zeros((128, 128), dtype=bool)
    low_resolution[48:80, :] = True  # the central rows only: no corner is sampled
    assert estimate_noise_std(complex_noise((128, 128), 1.0, seed=1), low_resolution) is None


def test_noiseless_measurements_are_always_replaced_exactly() -> None:
    for abar in (0.0001, 0.5, 0.999, 1.0):
        assert data_weight(abar, 0.0) == 1.0
        assert added_noise_std(abar, 0.0) == pytest.approx(np.sqrt(1 - abar))


def test_noisy_measurements_enter_with_the_level_noise_and_fade_below_it() -> None:
    sigma = 0.1
    crossover = 1.0 / (1.0 + sigma**2)  # abar where (1 - abar) / abar = sigma^2
    high_noise = 0.5
    assert data_weight(high_noise, sigma) == 1.0
    injected_var = high_noise * sigma**2 + added_noise_std(high_noise, sigma) ** 2
    assert injected_var == pytest.approx(1 - high_noise)
    assert data_weight(crossover, sigma) == pytest.approx(1.0)
    assert added_noise_std(crossover, sigma) == pytest.approx(0.0, abs=1e-6)
    low_noise = 0.999
    weight = data_weight(low_noise, sigma)
    assert 0 < weight < 1
    assert (weight * sigma) ** 2 == pytest.approx(level_noise_var(low_noise))
    assert data_weight(1.0, sigma) == 0.0
    assert added_noise_std(low_noise, sigma) == 0.0
