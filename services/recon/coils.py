"""Coil sensitivities and coil combination.

ESPIRiT maps (Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI:
where SENSE meets GRAPPA", MRM 2014) are estimated with sigpy from the fully sampled k-space
centre and normalised to unit sum of squares per pixel wherever they are nonzero, so that the
SENSE combination ``sum_c conj(S_c) x_c`` has the root-sum-of-squares scale (design.md).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from services.recon.errors import InputError
from services.recon.masks import mask_from_kspace

Array = TypeVar("Array", np.ndarray, torch.Tensor)

DEFAULT_KERNEL_WIDTH = 6
MIN_KERNEL_WIDTH = 3
DEFAULT_THRESHOLD = 0.02
DEFAULT_CROP = 0.95
MAX_AUTO_CALIB_WIDTH = 24  # sigpy's default; wider regions cost time for little gain


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Scale (C, H, W) maps to unit sum of squares over coils where they are nonzero (complex64)."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise InputError(f"coil maps must be shaped (C, H, W), got {maps.shape}")
    sum_of_squares = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    scale = np.divide(
        1.0, sum_of_squares, out=np.zeros_like(sum_of_squares), where=sum_of_squares > 0
    )
    return (maps * scale[None]).astype(np.complex64)


def calibration_width(kspace: np.ndarray) -> int:
    """Side of the largest fully sampled square centred on DC, in sigpy's ``resize`` convention.

    A square of width ``w`` covers rows/columns ``N//2 - w//2 ... N//2 - w//2 + w - 1`` on each
    axis, which is exactly what ``sigpy.mri.app.EspiritCalib`` crops for its calibration data.
    """
    sampled = mask_from_kspace(kspace)
    height, width = sampled.shape
    best = 0
    for side in range(1, min(height, width) + 1):
        top, left = height // 2 - side // 2, width // 2 - side // 2
        if not sampled[top : top + side, left : left + side].all():
            break
        best = side
    return best


def espirit_maps(
    kspace: np.ndarray,
    calib_width: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    crop: float = DEFAULT_CROP,
    kernel_width: int | None = None,
    max_iter: int = 100,
) -> np.ndarray:
    """ESPIRiT maps (C, H, W) complex64 from multi-coil k-space (C, H, W), via sigpy.

    ``calib_width=None`` uses the largest fully sampled centred square (see
    :func:`calibration_width`), at most ``MAX_AUTO_CALIB_WIDTH`` wide. ``threshold`` is the
    singular-value cut of the calibration matrix relative to the largest, ``crop`` the
    eigenvalue below which maps are set to zero (outside the object's support). The kernel is at
    most half the calibration width (narrower calibration matrices have too few rows and ESPIRiT
    crops everything): ``kernel_width=None`` picks ``min(6, calib_width // 2)``. Maps have unit
    sum of squares wherever they are nonzero; the phase is relative to coil 0, as sigpy gives it.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 3:
        raise InputError(f"multi-coil k-space must be shaped (C, H, W), got {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise InputError(f"k-space must be complex, got dtype {kspace.dtype}")
    if not np.isfinite(kspace).all():
        raise InputError("k-space contains NaN or infinite values")
    if calib_width is None:
        width = min(calibration_width(kspace), MAX_AUTO_CALIB_WIDTH)
    else:
        width = int(calib_width)
    if width > min(kspace.shape[-2:]):
        raise InputError(f"calib_width {width} exceeds the k-space size {kspace.shape[-2:]}")
    if kernel_width is None:
        kernel_width = min(DEFAULT_KERNEL_WIDTH, width // 2)
    if kernel_width < MIN_KERNEL_WIDTH or width < 2 * kernel_width:
        raise InputError(
            f"calibration region of {width} px is too small for ESPIRiT (kernel width "
            f"{kernel_width}, needs >= {2 * max(kernel_width, MIN_KERNEL_WIDTH)} fully sampled "
            "centre lines)"
        )
    import sigpy.mri.app  # deferred: sigpy pulls in scipy.signal, seconds of start-up

    maps = sigpy.mri.app.EspiritCalib(
        kspace.astype(np.complex64),
        calib_width=width,
        thresh=threshold,
        kernel_width=kernel_width,
        crop=crop,
        max_iter=max_iter,
        show_pbar=False,
    ).run()
    maps = normalize_maps(sigpy.to_device(maps, sigpy.cpu_device))
    if not maps.any():
        raise InputError("ESPIRiT found no coil sensitivities above the crop threshold")
    return maps


def birdcage_maps(n_coils: int, shape: tuple[int, int]) -> np.ndarray:
    """Simulated birdcage coil maps (sigpy.mri.birdcage_maps), unit sum of squares, complex64."""
    if n_coils < 1:
        raise InputError(f"n_coils must be >= 1, got {n_coils}")
    if len(shape) != 2:
        raise InputError(f"shape must be (H, W), got {tuple(shape)}")
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((n_coils, *shape), dtype=np.complex128)
    return normalize_maps(maps)


def rss(coil_images: Array, axis: int = -3) -> Array:
    """Root sum of squares over the coil axis."""
    if isinstance(coil_images, torch.Tensor):
        return torch.sqrt(torch.sum(torch.abs(coil_images) ** 2, dim=axis))
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=axis))


def sense_combine(coil_images: Array, maps: np.ndarray | torch.Tensor) -> Array:
    """SENSE combination ``sum_c conj(S_c) x_c`` of coil images (..., C, H, W), maps (C, H, W)."""
    if tuple(coil_images.shape[-3:]) != tuple(maps.shape):
        raise InputError(
            f"coil images {tuple(coil_images.shape)} do not match maps {tuple(maps.shape)}"
        )
    if isinstance(coil_images, torch.Tensor):
        maps_tensor = torch.as_tensor(maps, device=coil_images.device)
        return torch.sum(maps_tensor.conj() * coil_images, dim=-3)
    return np.sum(np.conj(np.asarray(maps)) * coil_images, axis=-3)
