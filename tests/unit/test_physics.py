"""Centered FFT, single-coil and SENSE operators, simulation (issue 2, item 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from services.recon.coils import birdcage_maps, sense_combine
from services.recon.errors import InputError
from services.recon.masks import random_mask_1d
from services.recon.metrics import foreground_mask
from services.recon.physics import (
    data_consistency_residual,
    fft2c,
    ifft2c,
    sense_adjoint,
    sense_forward,
    simulate_kspace,
    single_coil_adjoint,
    single_coil_forward,
)

torch.set_num_threads(1)

SHAPE = (32, 32)
N_COILS = 4


def random_complex(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def disc(shape: tuple[int, int] = SHAPE, radius: float = 0.6) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    return (x**2 + y**2 < radius**2).astype(np.float64)


@pytest.fixture
def mask() -> np.ndarray:
    return random_mask_1d(SHAPE, acceleration=3, center_fraction=0.125, seed=7)


@pytest.fixture
def maps() -> np.ndarray:
    """Random complex maps, deliberately not normalised: adjointness must hold for any maps."""
    return random_complex((N_COILS, *SHAPE), seed=11)


def inner(a: np.ndarray, b: np.ndarray) -> complex:
    return complex(np.vdot(a, b))


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else x


# --- FFT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (2, 31, 33), (3, 16, 20)])
def test_fft_round_trip_numpy_and_torch(shape: tuple[int, ...]) -> None:
    x = random_complex(shape, seed=0)
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=1e-12)
    np.testing.assert_allclose(fft2c(ifft2c(x)), x, atol=1e-12)
    x_torch = torch.from_numpy(x)
    np.testing.assert_allclose(ifft2c(fft2c(x_torch)).numpy(), x, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 32), (31, 33)])
def test_fft_numpy_equals_torch(shape: tuple[int, int]) -> None:
    x = random_complex(shape, seed=1)
    np.testing.assert_allclose(fft2c(torch.from_numpy(x)).numpy(), fft2c(x), atol=1e-12)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), ifft2c(x), atol=1e-12)


def test_fft_is_centered_and_orthonormal() -> None:
    """A constant image puts all energy at DC = index N//2, with value sqrt(H*W) (ortho)."""
    height, width = 31, 32
    kspace = fft2c(np.ones((height, width), dtype=np.complex128))
    assert np.unravel_index(np.argmax(np.abs(kspace)), kspace.shape) == (height // 2, width // 2)
    assert kspace[height // 2, width // 2] == pytest.approx(np.sqrt(height * width))
    x = random_complex(SHAPE, seed=2)
    assert np.linalg.norm(fft2c(x)) == pytest.approx(np.linalg.norm(x))


def test_fft_keeps_single_precision() -> None:
    x = random_complex(SHAPE, seed=3).astype(np.complex64)
    assert fft2c(x).dtype == np.complex64
    assert fft2c(torch.from_numpy(x)).dtype == torch.complex64


# --- adjointness and linearity -----------------------------------------------------------------


def _operators(
    maps: np.ndarray,
) -> dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[int, ...]]]:
    """name -> (forward(x, mask), adjoint(y, mask), k-space shape) for a (2, H, W) image batch."""
    return {
        "single-coil": (single_coil_forward, single_coil_adjoint, (2, *SHAPE)),
        "sense": (
            lambda x, m: sense_forward(x, maps, m),
            lambda y, m: sense_adjoint(y, maps, m),
            (2, N_COILS, *SHAPE),
        ),
    }


@pytest.mark.parametrize("operator", ["single-coil", "sense"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_adjoint_identity(operator: str, backend: str, mask: np.ndarray, maps: np.ndarray) -> None:
    """<A x, y> = <x, A^H y> to 1e-5 relative, complex128."""
    forward, adjoint, kspace_shape = _operators(maps)[operator]
    x = random_complex((2, *SHAPE), seed=4)
    y = random_complex(kspace_shape, seed=5)
    if backend == "torch":
        ax = as_numpy(forward(torch.from_numpy(x), mask))
        ahy = as_numpy(adjoint(torch.from_numpy(y), mask))
    else:
        ax, ahy = forward(x, mask), adjoint(y, mask)
    assert ax.dtype == np.complex128 and ahy.dtype == np.complex128
    lhs, rhs = inner(ax, y), inner(x, ahy)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


@pytest.mark.parametrize("operator", ["single-coil", "sense"])
def test_operators_are_linear(operator: str, mask: np.ndarray, maps: np.ndarray) -> None:
    forward, adjoint, kspace_shape = _operators(maps)[operator]
    x1, x2 = random_complex((2, *SHAPE), seed=6), random_complex((2, *SHAPE), seed=7)
    y1, y2 = random_complex(kspace_shape, seed=8), random_complex(kspace_shape, seed=9)
    a, b = 0.3 - 1.2j, -2.0 + 0.5j
    np.testing.assert_allclose(
        forward(a * x1 + b * x2, mask), a * forward(x1, mask) + b * forward(x2, mask), atol=1e-12
    )
    np.testing.assert_allclose(
        adjoint(a * y1 + b * y2, mask), a * adjoint(y1, mask) + b * adjoint(y2, mask), atol=1e-12
    )


@pytest.mark.parametrize("operator", ["single-coil", "sense"])
def test_operators_numpy_equals_torch(operator: str, mask: np.ndarray, maps: np.ndarray) -> None:
    forward, adjoint, kspace_shape = _operators(maps)[operator]
    x = random_complex((2, *SHAPE), seed=10)
    y = random_complex(kspace_shape, seed=11)
    np.testing.assert_allclose(
        as_numpy(forward(torch.from_numpy(x), torch.from_numpy(mask))),
        forward(x, mask),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        as_numpy(adjoint(torch.from_numpy(y), mask)),
        adjoint(y, mask),
        atol=1e-12,
    )


def test_sense_with_unit_maps_inverts_fully_sampled_data() -> None:
    """With unit sum-of-squares maps and a full mask, A^H A = identity."""
    unit_maps = birdcage_maps(N_COILS, SHAPE)
    x = random_complex(SHAPE, seed=12)
    full = np.ones(SHAPE, dtype=bool)
    np.testing.assert_allclose(
        sense_adjoint(sense_forward(x, unit_maps, full), unit_maps, full), x, atol=1e-5
    )


def test_forward_zeroes_unsampled_locations(mask: np.ndarray) -> None:
    kspace = single_coil_forward(random_complex(SHAPE, seed=13), mask)
    assert np.all(kspace[:, ~mask[0]] == 0)
    assert np.all(kspace[mask] != 0)


# --- bad input ---------------------------------------------------------------------------------


def test_adjoint_rejects_real_kspace(mask: np.ndarray) -> None:
    with pytest.raises(InputError, match="complex"):
        single_coil_adjoint(np.ones(SHAPE), mask)


def test_operators_reject_mask_shape_mismatch(maps: np.ndarray) -> None:
    x = random_complex(SHAPE, seed=14)
    wrong = np.ones((SHAPE[0], SHAPE[1] + 2), dtype=bool)
    with pytest.raises(InputError, match="mask shape"):
        single_coil_forward(x, wrong)
    with pytest.raises(InputError, match="mask shape"):
        sense_forward(x, maps, wrong)


def test_sense_rejects_wrong_maps(mask: np.ndarray, maps: np.ndarray) -> None:
    with pytest.raises(InputError, match="coil maps"):
        sense_forward(random_complex((16, 16), seed=15), maps, np.ones((16, 16), bool))
    with pytest.raises(InputError, match="coils"):
        sense_adjoint(random_complex((N_COILS + 1, *SHAPE), seed=16), maps, mask)


# --- data consistency --------------------------------------------------------------------------


def test_data_consistency_residual_hand_values(mask: np.ndarray, maps: np.ndarray) -> None:
    x = random_complex(SHAPE, seed=17)
    measured = single_coil_forward(x, mask)
    assert data_consistency_residual(x, measured, mask) == pytest.approx(0.0, abs=1e-12)
    assert data_consistency_residual(1.1 * x, measured, mask) == pytest.approx(0.1)
    measured_coils = sense_forward(x, maps, mask)
    assert data_consistency_residual(0.5 * x, measured_coils, mask, maps) == pytest.approx(0.5)
    torch_value = data_consistency_residual(
        torch.from_numpy(0.5 * x), torch.from_numpy(measured_coils), mask, maps
    )
    assert torch_value == pytest.approx(0.5)


def test_data_consistency_residual_rejects_bad_input(mask: np.ndarray) -> None:
    x = random_complex(SHAPE, seed=18)
    measured = single_coil_forward(x, mask)
    with pytest.raises(InputError, match="NaN"):
        data_consistency_residual(x, np.where(mask, np.nan, measured), mask)
    with pytest.raises(InputError, match="zero"):
        data_consistency_residual(x, np.zeros(SHAPE, np.complex64), mask)


# --- simulation --------------------------------------------------------------------------------


def test_simulate_kspace_noise_matches_stated_snr() -> None:
    """SNR = mean foreground magnitude / noise std per real/imag channel (image domain)."""
    magnitude = 3.0 * disc((64, 64))
    snr = 20.0
    noisy = simulate_kspace(magnitude, snr=snr, seed=3)
    clean = simulate_kspace(magnitude, snr=float("inf"), seed=3)
    noise = ifft2c(noisy.astype(np.complex128) - clean)
    sigma = magnitude[foreground_mask(magnitude)].mean() / snr
    assert noise.real.std() == pytest.approx(sigma, rel=0.05)
    assert noise.imag.std() == pytest.approx(sigma, rel=0.05)


def test_simulate_kspace_has_smooth_nontrivial_phase() -> None:
    """Not the real-valued inverse crime: the image is complex with a smooth phase."""
    magnitude = disc((64, 64))
    clean = simulate_kspace(magnitude, snr=float("inf"), seed=5)
    assert clean.dtype == np.complex64 and clean.shape == (64, 64)
    image = ifft2c(clean.astype(np.complex128))
    np.testing.assert_allclose(np.abs(image), magnitude, atol=1e-5)
    inside = magnitude > 0
    assert np.abs(image.imag[inside]).mean() > 0.1
    phase_step = np.abs(np.angle(image[:, 1:] * np.conj(image[:, :-1])))
    assert phase_step[inside[:, 1:] & inside[:, :-1]].max() < 0.5


def test_simulate_kspace_is_a_function_of_seed() -> None:
    magnitude = disc()
    np.testing.assert_array_equal(
        simulate_kspace(magnitude, 10.0, seed=1), simulate_kspace(magnitude, 10.0, seed=1)
    )
    assert not np.allclose(
        simulate_kspace(magnitude, 10.0, seed=1), simulate_kspace(magnitude, 10.0, seed=2)
    )


def test_simulate_multicoil_kspace_combines_to_the_image() -> None:
    magnitude = disc()
    coil_maps = birdcage_maps(N_COILS, SHAPE)
    kspace = simulate_kspace(magnitude, snr=float("inf"), seed=4, maps=coil_maps)
    assert kspace.shape == (N_COILS, *SHAPE)
    combined = sense_combine(ifft2c(kspace.astype(np.complex128)), coil_maps)
    np.testing.assert_allclose(np.abs(combined), magnitude, atol=1e-5)


@pytest.mark.parametrize(
    ("magnitude", "snr", "message"),
    [
        (np.full(SHAPE, np.nan), 10.0, "NaN"),
        (disc().astype(np.complex64), 10.0, "real"),
        (disc(), 0.0, "snr"),
        (np.zeros(SHAPE), 10.0, "foreground"),
        (np.ones(8), 10.0, "2-D"),
    ],
)
def test_simulate_kspace_rejects_bad_input(magnitude: np.ndarray, snr: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        simulate_kspace(magnitude, snr=snr, seed=0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_operators_keep_single_precision(backend: str, maps: np.ndarray) -> None:
    """complex128 maps and a float 0/1 mask do not promote complex64 data to complex128."""
    x = random_complex(SHAPE, seed=19).astype(np.complex64)
    float_mask = random_mask_1d(SHAPE, 3, 0.125, seed=1).astype(np.float64)
    if backend == "torch":
        data = torch.from_numpy(x)
        single, coils = single_coil_forward(data, float_mask), sense_forward(data, maps, float_mask)
        results = [single, coils, sense_adjoint(coils, maps, float_mask)]
        results.append(single_coil_adjoint(single, float_mask))
        assert all(result.dtype == torch.complex64 for result in results)
    else:
        single_np = single_coil_forward(x, float_mask)
        coils_np = sense_forward(x, maps, float_mask)
        results_np = [single_np, coils_np, sense_adjoint(coils_np, maps, float_mask)]
        results_np.append(single_coil_adjoint(single_np, float_mask))
        assert all(result.dtype == np.complex64 for result in results_np)
