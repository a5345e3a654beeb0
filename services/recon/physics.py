"""k-space physics: centered orthonormal FFT, single-coil and SENSE operators, simulation.

Conventions (design.md): k-space is centered (DC at index N//2 on each of the last two axes) and
the FFT is orthonormal, ``ifftshift -> fft2(norm="ortho") -> fftshift`` as in fastMRI
(``fastmri/fftc.py``). Every operator accepts numpy arrays or torch tensors and returns the same
kind it was given; masks and coil maps given as numpy arrays are moved to the tensor's device.

Operators, with ``F`` the centered FFT, ``M`` the 0/1 sampling mask and ``S`` the coil maps:

- single coil:  ``A x = M F x``,        ``A^H y = F^H M y``
- SENSE:        ``A x = M F (S x)``,    ``A^H y = sum_c conj(S_c) F^H M y_c``
  (Pruessmann et al., "SENSE: sensitivity encoding for fast MRI", MRM 1999).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage

from services.recon.errors import InputError

Array = TypeVar("Array", np.ndarray, torch.Tensor)

_IMAGE_AXES = (-2, -1)


def fft2c(x: Array) -> Array:
    """Centered orthonormal 2-D FFT over the last two axes (image -> k-space)."""
    if isinstance(x, torch.Tensor):
        shifted = torch.fft.ifftshift(x, dim=_IMAGE_AXES)
        return torch.fft.fftshift(torch.fft.fft2(shifted, norm="ortho"), dim=_IMAGE_AXES)
    x = np.asarray(x)
    shifted_np = np.fft.ifftshift(x, axes=_IMAGE_AXES)
    return np.fft.fftshift(np.fft.fft2(shifted_np, norm="ortho"), axes=_IMAGE_AXES)


def ifft2c(x: Array) -> Array:
    """Centered orthonormal 2-D inverse FFT over the last two axes (k-space -> image)."""
    if isinstance(x, torch.Tensor):
        shifted = torch.fft.ifftshift(x, dim=_IMAGE_AXES)
        return torch.fft.fftshift(torch.fft.ifft2(shifted, norm="ortho"), dim=_IMAGE_AXES)
    x = np.asarray(x)
    shifted_np = np.fft.ifftshift(x, axes=_IMAGE_AXES)
    return np.fft.fftshift(np.fft.ifft2(shifted_np, norm="ortho"), axes=_IMAGE_AXES)


def _as_like(reference: Array, value: np.ndarray | torch.Tensor) -> Array:
    """Return ``value`` as the kind of array ``reference`` is (numpy, or torch on its device)."""
    if isinstance(reference, torch.Tensor):
        if isinstance(value, torch.Tensor):
            return value.to(device=reference.device)
        return torch.as_tensor(np.asarray(value), device=reference.device)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _mask_like(reference: Array, mask: np.ndarray | torch.Tensor) -> Array:
    """The 0/1 mask as a bool array of ``reference``'s kind: multiplying keeps its dtype."""
    return _as_like(reference, mask != 0)


def _maps_like(reference: Array, maps: np.ndarray | torch.Tensor) -> Array:
    """Coil maps as ``reference``'s kind, in its complex precision when it is complex."""
    converted = _as_like(reference, maps)
    if isinstance(reference, torch.Tensor):
        return converted.to(reference.dtype) if reference.is_complex() else converted
    if np.iscomplexobj(reference):
        return converted.astype(reference.dtype, copy=False)
    return converted


def _check_mask(mask: np.ndarray | torch.Tensor, data_shape: tuple[int, ...], what: str) -> None:
    """Raise InputError unless ``mask`` broadcasts to ``data_shape`` without enlarging it."""
    mask_shape = tuple(mask.shape)
    try:
        broadcast = np.broadcast_shapes(mask_shape, data_shape)
    except ValueError:
        broadcast = None
    if broadcast != data_shape:
        raise InputError(f"mask shape {mask_shape} does not fit {what} shape {data_shape}")


def _check_complex(x: np.ndarray | torch.Tensor, what: str) -> None:
    is_complex = x.is_complex() if isinstance(x, torch.Tensor) else np.iscomplexobj(x)
    if not is_complex:
        raise InputError(f"{what} must be complex, got dtype {x.dtype}")


def _check_maps(maps: np.ndarray | torch.Tensor, image_shape: tuple[int, ...]) -> None:
    if maps.ndim != 3:
        raise InputError(f"coil maps must be shaped (C, H, W), got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) != tuple(image_shape[-2:]):
        raise InputError(
            f"coil maps shape {tuple(maps.shape)} does not match image shape {tuple(image_shape)}"
        )


def single_coil_forward(image: Array, mask: np.ndarray | torch.Tensor) -> Array:
    """Single-coil forward operator ``M F x``: image (..., H, W) -> masked k-space (..., H, W)."""
    _check_mask(mask, tuple(image.shape), "image")
    return fft2c(image) * _mask_like(image, mask)


def single_coil_adjoint(kspace: Array, mask: np.ndarray | torch.Tensor) -> Array:
    """Adjoint of :func:`single_coil_forward`, ``F^H M y``: k-space (..., H, W) -> image."""
    _check_complex(kspace, "k-space")
    _check_mask(mask, tuple(kspace.shape), "k-space")
    return ifft2c(kspace * _mask_like(kspace, mask))


def sense_forward(
    image: Array, maps: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor
) -> Array:
    """SENSE forward operator ``M F S x``: image (..., H, W) -> k-space (..., C, H, W)."""
    _check_maps(maps, tuple(image.shape))
    coil_images = image[..., None, :, :] * _maps_like(image, maps)
    _check_mask(mask, tuple(coil_images.shape), "k-space")
    return fft2c(coil_images) * _mask_like(image, mask)


def sense_adjoint(
    kspace: Array, maps: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor
) -> Array:
    """SENSE adjoint ``sum_c conj(S_c) F^H M y_c``: (..., C, H, W) -> (..., H, W)."""
    _check_complex(kspace, "k-space")
    if kspace.ndim < 3:
        raise InputError(f"multi-coil k-space must be shaped (..., C, H, W), got {kspace.shape}")
    _check_maps(maps, tuple(kspace.shape))
    if maps.shape[0] != kspace.shape[-3]:
        raise InputError(f"coil maps have {maps.shape[0]} coils but k-space has {kspace.shape[-3]}")
    _check_mask(mask, tuple(kspace.shape), "k-space")
    coil_images = ifft2c(kspace * _mask_like(kspace, mask))
    return (_maps_like(kspace, maps).conj() * coil_images).sum(-3)


def forward(
    image: Array, mask: np.ndarray | torch.Tensor, maps: np.ndarray | torch.Tensor | None = None
) -> Array:
    """Single-coil forward operator when ``maps`` is None, SENSE otherwise."""
    if maps is None:
        return single_coil_forward(image, mask)
    return sense_forward(image, maps, mask)


def adjoint(
    kspace: Array, mask: np.ndarray | torch.Tensor, maps: np.ndarray | torch.Tensor | None = None
) -> Array:
    """Adjoint of :func:`forward`: single-coil when ``maps`` is None, SENSE otherwise."""
    if maps is None:
        return single_coil_adjoint(kspace, mask)
    return sense_adjoint(kspace, maps, mask)


def _norm(x: np.ndarray | torch.Tensor) -> float:
    if isinstance(x, torch.Tensor):
        return float(torch.linalg.vector_norm(x).item())
    return float(np.linalg.norm(x))


def _all_finite(x: np.ndarray | torch.Tensor) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all().item())
    return bool(np.isfinite(x).all())


def data_consistency_residual(
    image: Array,
    kspace: Array,
    mask: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor | None = None,
) -> float:
    """Relative data-consistency residual ``||M (F S x) - M y|| / ||M y||``.

    ``maps=None`` means single coil (``S`` = identity). Only sampled locations count, so
    k-space that holds values outside the mask is measured on the mask alone.
    """
    _check_complex(kspace, "k-space")
    if not _all_finite(kspace):
        raise InputError("k-space contains NaN or infinite values")
    if not _all_finite(image):
        raise InputError("image contains NaN or infinite values")
    predicted = forward(image, mask, maps)
    if tuple(predicted.shape) != tuple(kspace.shape):
        raise InputError(
            f"image predicts k-space shaped {tuple(predicted.shape)}, got {tuple(kspace.shape)}"
        )
    measured = kspace * _mask_like(kspace, mask)
    measured_norm = _norm(measured)
    if measured_norm == 0.0:
        raise InputError("k-space is zero on every sampled location")
    return _norm(predicted - _as_like(predicted, measured)) / measured_norm


def smooth_random_phase(
    shape: tuple[int, int], seed: int | np.random.SeedSequence, max_order: int = 2
) -> np.ndarray:
    """Smooth random phase map (radians), float64 (H, W), a function of (shape, seed).

    The phase is a random constant offset (uniform on [-pi, pi)) plus a polynomial of order
    ``max_order`` in normalised coordinates [-1, 1] (coefficients N(0, (pi/4)^2)) plus a
    low-pass Gaussian random field (white noise smoothed with sigma = min(H, W)/8, scaled to a
    standard deviation of pi/4): the slowly varying background phase of a real scan (B0
    inhomogeneity, coil and receiver phase) without sharp jumps.
    """
    height, width = shape
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, height)[:, None]
    x = np.linspace(-1.0, 1.0, width)[None, :]
    phase = np.full((height, width), rng.uniform(-np.pi, np.pi))
    for order in range(1, max_order + 1):
        for power_y in range(order + 1):
            coefficient = rng.normal(0.0, np.pi / 4)
            phase = phase + coefficient * y**power_y * x ** (order - power_y)
    field = ndimage.gaussian_filter(
        rng.standard_normal((height, width)), sigma=min(height, width) / 8, mode="wrap"
    )
    field_std = field.std()
    if field_std > 0:
        phase = phase + field * (np.pi / 4) / field_std
    return phase


def simulate_kspace(
    magnitude: np.ndarray | torch.Tensor,
    snr: float,
    seed: int,
    maps: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Simulate fully sampled complex64 k-space from a magnitude image, never the inverse crime.

    Steps: ``x = magnitude * exp(i phi)`` with ``phi`` from :func:`smooth_random_phase` (seed);
    coil images ``S_c x`` when ``maps`` (C, H, W) are given; centered orthonormal FFT; complex
    white Gaussian noise added independently to the real and imaginary part of every sample.

    SNR definition: ``snr = mean(magnitude over the foreground) / sigma``, where the foreground is
    :func:`services.recon.metrics.foreground_mask` of ``magnitude`` and ``sigma`` is the noise
    standard deviation of each real/imaginary channel, identical in k-space and in the image
    domain because the FFT is orthonormal. With maps normalised to unit sum of squares, the noise
    in the SENSE-combined image also has std ``sigma`` per channel, so the stated SNR holds for the
    coil-combined image. ``snr=inf`` gives noiseless k-space. Returns (H, W) or (C, H, W).
    Seeds: phase and noise use two independent streams spawned from ``SeedSequence(seed)``.
    """
    from services.recon.metrics import foreground_mask  # metrics does not import physics

    if isinstance(magnitude, torch.Tensor):
        magnitude = magnitude.detach().cpu().numpy()
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    magnitude = np.asarray(magnitude)
    if magnitude.ndim != 2:
        raise InputError(f"magnitude must be a 2-D image (H, W), got shape {magnitude.shape}")
    if np.iscomplexobj(magnitude):
        raise InputError("magnitude must be real-valued; pass |image|")
    if not np.isfinite(magnitude).all():
        raise InputError("magnitude contains NaN or infinite values")
    if (magnitude < 0).any():
        raise InputError("magnitude must be non-negative")
    if not snr > 0:
        raise InputError(f"snr must be positive, got {snr}")
    foreground = foreground_mask(magnitude)
    if not foreground.any():
        raise InputError("magnitude has no foreground to define the SNR on")

    phase_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    phase = smooth_random_phase((magnitude.shape[0], magnitude.shape[1]), phase_seed)
    image = magnitude.astype(np.float64) * np.exp(1j * phase)
    if maps is not None:
        maps = np.asarray(maps)
        _check_maps(maps, magnitude.shape)
        kspace = fft2c(maps.astype(np.complex128) * image[None])
    else:
        kspace = fft2c(image)
    if np.isfinite(snr):
        sigma = float(magnitude[foreground].mean()) / snr
        noise_rng = np.random.default_rng(noise_seed)
        noise = noise_rng.standard_normal(kspace.shape) + 1j * noise_rng.standard_normal(
            kspace.shape
        )
        kspace = kspace + sigma * noise
    return kspace.astype(np.complex64)
