"""ESPIRiT maps, coil combination, simulated birdcage coils (issue 2, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy
import torch

from services.recon.coils import (
    birdcage_maps,
    calibration_width,
    espirit_maps,
    normalize_maps,
    rss,
    sense_combine,
)
from services.recon.errors import InputError
from services.recon.masks import random_mask_1d
from services.recon.metrics import nmse
from services.recon.physics import fft2c, ifft2c, smooth_random_phase

torch.set_num_threads(1)

SIZE = 64
N_COILS = 8


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """Shepp-Logan magnitude times a smooth random phase, complex128 (64, 64)."""
    magnitude = np.abs(sigpy.shepp_logan((SIZE, SIZE)))
    return magnitude * np.exp(1j * smooth_random_phase((SIZE, SIZE), seed=3))


@pytest.fixture(scope="module")
def true_maps() -> np.ndarray:
    return birdcage_maps(N_COILS, (SIZE, SIZE)).astype(np.complex128)


@pytest.fixture(scope="module")
def coil_kspace(phantom: np.ndarray, true_maps: np.ndarray) -> np.ndarray:
    """Noiseless, fully sampled 8-coil k-space of the phantom."""
    return fft2c(true_maps * phantom)


def test_espirit_sense_recovers_fully_sampled_phantom(
    phantom: np.ndarray, true_maps: np.ndarray, coil_kspace: np.ndarray
) -> None:
    """ESPIRiT maps are fixed only up to one phase per pixel; sigpy makes coil 0 real. With
    unit-SoS true maps B, ESPIRiT returns S_c = B_c e^{-i arg B_0}, so the SENSE combination
    sum_c conj(S_c) B_c x equals x e^{i arg B_0}: the phantom, times the phase of coil 0's true
    map, and its magnitude equals |x| = RSS. The correct complex reference is therefore
    x * B_0/|B_0|; we also check the magnitude against |x| and against RSS. Compared inside the
    object's support (the phantom is zero outside it, where ESPIRiT crops the maps)."""
    maps = espirit_maps(coil_kspace.astype(np.complex64))
    combined = sense_combine(ifft2c(coil_kspace), maps)
    support = np.abs(phantom) > 0
    assert np.all(np.sum(np.abs(maps) ** 2, axis=0)[support] > 0.99)
    reference = phantom * true_maps[0] / np.abs(true_maps[0])
    assert nmse(reference[support], combined[support]) < 1e-3
    assert nmse(np.abs(phantom)[support], np.abs(combined)[support]) < 1e-3
    assert nmse(rss(ifft2c(coil_kspace))[support], np.abs(combined)[support]) < 1e-3


def test_espirit_from_undersampled_kspace_detects_calibration(
    phantom: np.ndarray, coil_kspace: np.ndarray
) -> None:
    """A 1-D mask with 13 centre columns: the calibration square is 13 wide and the maps still
    combine the fully sampled coil images to the phantom magnitude."""
    mask = random_mask_1d((SIZE, SIZE), acceleration=4, center_fraction=0.2, seed=0)
    undersampled = (coil_kspace * mask).astype(np.complex64)
    assert calibration_width(undersampled) == round(SIZE * 0.2)
    maps = espirit_maps(undersampled)
    support = np.abs(phantom) > 0
    combined = sense_combine(ifft2c(coil_kspace), maps)
    assert nmse(np.abs(phantom)[support], np.abs(combined)[support]) < 1e-3


def test_espirit_maps_have_unit_sum_of_squares_where_nonzero(coil_kspace: np.ndarray) -> None:
    maps = espirit_maps(coil_kspace.astype(np.complex64), calib_width=16)
    assert maps.dtype == np.complex64 and maps.shape == (N_COILS, SIZE, SIZE)
    sum_of_squares = np.sum(np.abs(maps) ** 2, axis=0)
    nonzero = sum_of_squares > 0
    assert nonzero.any() and not nonzero.all()
    np.testing.assert_allclose(sum_of_squares[nonzero], 1.0, rtol=1e-5)


def test_espirit_rejects_bad_input(coil_kspace: np.ndarray) -> None:
    with pytest.raises(InputError, match="complex"):
        espirit_maps(np.abs(coil_kspace))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        espirit_maps(coil_kspace[0])
    nan_kspace = coil_kspace.copy()
    nan_kspace[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        espirit_maps(nan_kspace)
    mask = random_mask_1d((SIZE, SIZE), acceleration=8, center_fraction=0.04, seed=0)
    with pytest.raises(InputError, match="too small"):
        espirit_maps(coil_kspace * mask)
    with pytest.raises(InputError, match="too small"):
        espirit_maps(coil_kspace, calib_width=10, kernel_width=6)


def test_espirit_adapts_kernel_to_a_narrow_calibration_region(
    phantom: np.ndarray, coil_kspace: np.ndarray
) -> None:
    """8 centre columns: a 6-wide kernel would leave a 3x3-row calibration matrix and ESPIRiT
    would crop every map; the automatic kernel (4) still recovers the sensitivities."""
    mask = random_mask_1d((SIZE, SIZE), acceleration=4, center_fraction=0.125, seed=0)
    maps = espirit_maps((coil_kspace * mask).astype(np.complex64))
    support = np.abs(phantom) > 0
    combined = sense_combine(ifft2c(coil_kspace), maps)
    assert nmse(np.abs(phantom)[support], np.abs(combined)[support]) < 1e-3


def test_calibration_width_follows_sigpy_crop() -> None:
    sampled = np.zeros((1, 32, 40), dtype=np.complex64)
    sampled[:, 16 - 5 : 16 - 5 + 10, 20 - 5 : 20 - 5 + 10] = 1.0
    assert calibration_width(sampled) == 10
    sampled[:, 16 - 5, 20] = 0.0
    assert calibration_width(sampled) < 10


def test_birdcage_maps_are_normalised() -> None:
    maps = birdcage_maps(4, (32, 48))
    assert maps.shape == (4, 32, 48) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-5)


def test_normalize_maps_leaves_zeros_alone() -> None:
    maps = np.zeros((2, 2, 2), dtype=np.complex64)
    maps[:, 0, 0] = [3.0, 4.0j]
    normalised = normalize_maps(maps)
    np.testing.assert_allclose(normalised[:, 0, 0], [0.6, 0.8j], rtol=1e-6)
    assert np.all(normalised[:, 1:, :] == 0)


def test_rss_and_sense_combine_hand_values() -> None:
    coil_images = np.array([3.0 + 0j, 4.0j]).reshape(2, 1, 1)
    assert rss(coil_images)[0, 0] == pytest.approx(5.0)
    maps = np.array([0.6 + 0j, 0.8j]).reshape(2, 1, 1)
    # conj(0.6)*3 + conj(0.8j)*4j = 1.8 + 3.2
    assert sense_combine(coil_images, maps)[0, 0] == pytest.approx(5.0)


def test_sense_combine_inverts_true_maps_numpy_and_torch(
    phantom: np.ndarray, true_maps: np.ndarray
) -> None:
    coil_images = true_maps * phantom
    np.testing.assert_allclose(sense_combine(coil_images, true_maps), phantom, atol=1e-6)
    torch_combined = sense_combine(torch.from_numpy(coil_images), true_maps)
    np.testing.assert_allclose(torch_combined.numpy(), phantom, atol=1e-6)
    np.testing.assert_allclose(rss(torch.from_numpy(coil_images)).numpy(), rss(coil_images))
    np.testing.assert_allclose(rss(coil_images), np.abs(phantom), atol=1e-6)


def test_sense_combine_rejects_shape_mismatch(true_maps: np.ndarray) -> None:
    with pytest.raises(InputError, match="do not match"):
        sense_combine(np.ones((N_COILS - 1, SIZE, SIZE), np.complex64), true_maps)
