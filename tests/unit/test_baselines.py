"""Zero-filled and compressed-sensing baselines (issue 2, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy

from services.recon.baselines import (
    BASELINES,
    DEFAULT_LAMBDA,
    LAMBDA_GRID,
    cs_l1_wavelet,
    cs_tv,
    run_baseline,
    zero_filled,
)
from services.recon.coils import birdcage_maps
from services.recon.errors import InputError
from services.recon.masks import make_mask
from services.recon.metrics import nmse
from services.recon.physics import fft2c, ifft2c, simulate_kspace, smooth_random_phase

SIZE = 64


@pytest.fixture(scope="module")
def magnitude() -> np.ndarray:
    return np.abs(sigpy.shepp_logan((SIZE, SIZE))).astype(np.float64)


@pytest.fixture(scope="module")
def ground_truth(magnitude: np.ndarray) -> np.ndarray:
    """The noiseless complex image behind :func:`simulate_kspace` with seed 0."""
    return ifft2c(simulate_kspace(magnitude, snr=float("inf"), seed=0).astype(np.complex128))


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    return make_mask("poisson2d", (SIZE, SIZE), acceleration=4, center_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def kspace(magnitude: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return simulate_kspace(magnitude, snr=50.0, seed=0) * mask


def test_zero_filled_single_coil_is_the_adjoint(kspace: np.ndarray, mask: np.ndarray) -> None:
    image = zero_filled(kspace, mask)
    assert image.dtype == np.complex64 and image.shape == (SIZE, SIZE)
    np.testing.assert_allclose(image, ifft2c(kspace * mask), atol=1e-5)


def test_zero_filled_multicoil_has_rss_scale(magnitude: np.ndarray) -> None:
    """Fully sampled, with unit-SoS maps: the SENSE-combined adjoint is the image itself."""
    maps = birdcage_maps(4, (SIZE, SIZE))
    image = magnitude * np.exp(1j * smooth_random_phase((SIZE, SIZE), seed=1))
    coil_kspace = fft2c(maps * image).astype(np.complex64)
    full = np.ones((SIZE, SIZE), dtype=bool)
    combined = zero_filled(coil_kspace, full, maps)
    np.testing.assert_allclose(combined, image, atol=1e-5)
    estimated_maps = zero_filled(coil_kspace, full)  # ESPIRiT maps estimated from the centre
    np.testing.assert_allclose(np.abs(estimated_maps), magnitude, atol=1e-3)


@pytest.mark.parametrize("method", ["cs-l1", "cs-tv"])
def test_cs_beats_zero_filled_single_coil_4x(
    method: str, kspace: np.ndarray, mask: np.ndarray, ground_truth: np.ndarray
) -> None:
    baseline = nmse(ground_truth, zero_filled(kspace, mask))
    result = run_baseline(method, kspace, mask)
    assert result.dtype == np.complex64 and result.shape == (SIZE, SIZE)
    assert nmse(ground_truth, result) < 0.8 * baseline


@pytest.mark.parametrize("method", ["cs-l1", "cs-tv"])
def test_cs_beats_zero_filled_multicoil_4x(method: str, magnitude: np.ndarray) -> None:
    """8 birdcage coils, 1-D random mask with 8 centre columns, ESPIRiT maps estimated inside
    the baseline (compared as magnitudes: ESPIRiT fixes the phase to coil 0's)."""
    maps = birdcage_maps(8, (SIZE, SIZE))
    mask = make_mask("random1d", (SIZE, SIZE), acceleration=4, center_fraction=0.125, seed=1)
    coil_kspace = simulate_kspace(magnitude, snr=50.0, seed=2, maps=maps) * mask
    reference = np.abs(
        ifft2c(simulate_kspace(magnitude, snr=float("inf"), seed=2).astype(np.complex128))
    )
    baseline = nmse(reference, np.abs(zero_filled(coil_kspace, mask)))
    result = run_baseline(method, coil_kspace, mask)
    assert nmse(reference, np.abs(result)) < 0.8 * baseline


def test_lambda_is_relative_so_results_scale_with_the_data(
    kspace: np.ndarray, mask: np.ndarray
) -> None:
    scale = 1000.0
    for method in (cs_l1_wavelet, cs_tv):
        small = method(kspace, mask, 1e-2, max_iter=30)
        large = method((scale * kspace).astype(np.complex64), mask, 1e-2, max_iter=30)
        np.testing.assert_allclose(large / scale, small, atol=1e-4 * np.abs(small).max())


def test_cs_is_deterministic(kspace: np.ndarray, mask: np.ndarray) -> None:
    """Step sizes come from exact bounds, not sigpy's unseeded power iteration."""
    for method in (cs_l1_wavelet, cs_tv):
        first = method(kspace, mask, 1e-2, max_iter=20)
        np.testing.assert_array_equal(first, method(kspace, mask, 1e-2, max_iter=20))


def test_lambda_zero_keeps_measured_data(kspace: np.ndarray, mask: np.ndarray) -> None:
    """Without regularisation the CS solution stays consistent with the measurements."""
    result = cs_l1_wavelet(kspace, mask, 0.0, max_iter=30)
    measured = fft2c(result.astype(np.complex128)) * mask
    assert np.linalg.norm(measured - kspace) < 1e-3 * np.linalg.norm(kspace)


def test_registry_and_grid() -> None:
    assert set(BASELINES) == {"zero-filled", "cs-l1", "cs-tv"}
    assert len(LAMBDA_GRID) >= 5 and list(LAMBDA_GRID) == sorted(LAMBDA_GRID)
    assert set(DEFAULT_LAMBDA) == {"cs-l1", "cs-tv"}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_reject_bad_input(name: str, kspace: np.ndarray, mask: np.ndarray) -> None:
    with pytest.raises(InputError, match="complex"):
        run_baseline(name, np.abs(kspace), mask)
    nan_kspace = kspace.copy()
    nan_kspace[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        run_baseline(name, nan_kspace, mask)
    with pytest.raises(InputError, match="mask shape"):
        run_baseline(name, kspace, mask[:, :-1])
    with pytest.raises(InputError, match="takes no coil maps"):
        run_baseline(name, kspace, mask, maps=np.ones((1, SIZE, SIZE), np.complex64))
    with pytest.raises(InputError, match="samples nothing"):
        run_baseline(name, kspace, np.zeros_like(mask))


def test_unknown_baseline_and_bad_lambda(kspace: np.ndarray, mask: np.ndarray) -> None:
    with pytest.raises(InputError, match="unknown baseline"):
        run_baseline("grappa", kspace, mask)
    with pytest.raises(InputError, match="lam"):
        cs_tv(kspace, mask, -1.0)
