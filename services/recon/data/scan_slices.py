"""A site's fully sampled scan as 2-D slices on the slice bank's grid.

A volume read by :func:`services.recon.io.read_input` becomes images: fully sampled k-space
through the centred inverse FFT (multi-coil: ESPIRiT maps and the SENSE combination of
:mod:`services.recon.coils`, so the phase is the measured one); magnitude images (NIfTI, DICOM)
as they are, their phase is added per bank slice later. Every slice is resampled to square
``pixel_mm`` pixels and padded/cropped to ``size`` x ``size`` around the centre of the volume's
foreground, as :mod:`services.recon.data.splits` prepares the evaluation slices.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from services.recon.coils import espirit_maps, sense_combine
from services.recon.data.splits import head_centre, place_in_field_of_view, zoom_to_pixel
from services.recon.errors import InputError
from services.recon.io.volumes import ImageVolume, KspaceVolume
from services.recon.physics import ifft2c

FOREGROUND_FRACTION_OF_P99 = 0.1
"""Foreground (design.md): magnitude above 10 % of the 99th percentile (here of the volume)."""
PLAUSIBLE_PIXEL_MM = (0.05, 20.0)
ESPIRIT_CROP = 0.0
"""Maps are kept outside the object, so the combined background keeps its measured noise."""


class ScanSlices(NamedTuple):
    """The slices of one scan on the bank's grid, and what was done to put them there."""

    images: np.ndarray
    """(S, size, size): complex64 with the measured phase, or float32 magnitude."""
    measured_phase: bool
    content: str
    """What the scan held, e.g. "k-space, 8 coils, ESPIRiT + SENSE combined"."""
    pixel_mm_in: tuple[float, float] | None
    geometry: str
    """How the slices reached the grid (resampling, field of view)."""
    foreground_level: float
    """Magnitude above which a pixel is foreground: 10 % of the volume's 99th percentile."""


def require_fully_sampled(mask: np.ndarray, label: str) -> None:
    """Refuse k-space with gaps: on each slice every sample inside the bounding box of the
    sampled region must be sampled (zero-padded edges, as in fastMRI files, are allowed)."""
    for index, plane in enumerate(np.asarray(mask, dtype=bool)):
        rows, cols = np.nonzero(plane)
        if len(rows) == 0:
            raise InputError(f"{label}: slice {index} has no sampled k-space")
        box = plane[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        if not box.all():
            missing = 100.0 * (1.0 - box.mean())
            raise InputError(
                f"{label}: k-space is undersampled ({missing:.0f} % of slice {index} missing); "
                "import-bank needs fully sampled scans"
            )


def coil_combined(volume: KspaceVolume, label: str) -> np.ndarray:
    """Complex images (S, H, W) of fully sampled k-space: ESPIRiT + SENSE, or one coil's iFFT."""
    require_fully_sampled(volume.mask, label)
    combined = []
    for kspace in volume.kspace:  # one slice at a time: (C, H, W)
        coil_images = ifft2c(kspace)
        if volume.multicoil:
            combined.append(sense_combine(coil_images, espirit_maps(kspace, crop=ESPIRIT_CROP)))
        else:
            combined.append(coil_images[0])
    return np.asarray(combined, dtype=np.complex64)


def input_pixel_mm(
    spacing: tuple[float, float] | None, shape: tuple[int, int], size: int, pixel_mm: float
) -> tuple[tuple[float, float], str]:
    """The (row, column) pixel size to resample from, and a sentence saying where it came from.

    Without a pixel size in the file the pixels are taken as square with the longer side of the
    image spanning the bank's field of view (``size * pixel_mm``).
    """
    target = f"{pixel_mm:g} mm square pixels, {size}x{size} ({size * pixel_mm:g} mm field of view)"
    if spacing is None:
        assumed = size * pixel_mm / max(shape)
        return (assumed, assumed), (
            f"no pixel size in the file: assumed square pixels with the longer side "
            f"({max(shape)} px) spanning the field of view; resampled to {target}"
        )
    low, high = PLAUSIBLE_PIXEL_MM
    if not all(low <= value <= high for value in spacing):
        raise InputError(f"implausible pixel size {spacing} mm (expected {low}-{high} mm)")
    row_mm, col_mm = spacing
    return spacing, f"resampled from {row_mm:g} x {col_mm:g} mm pixels to {target}"


def on_grid(image: np.ndarray, spacing: tuple[float, float], pixel_mm: float) -> np.ndarray:
    """A 2-D image (real or complex) resampled to square ``pixel_mm`` pixels."""
    if not np.iscomplexobj(image):
        return np.clip(zoom_to_pixel(image, *spacing, pixel_mm), 0.0, None).astype(np.float32)
    real = zoom_to_pixel(image.real, *spacing, pixel_mm)
    imag = zoom_to_pixel(image.imag, *spacing, pixel_mm)
    return (real + 1j * imag).astype(np.complex64)


def placed(image: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """``image`` padded (zeros) / cropped to ``size`` x ``size`` with ``centre`` in the middle."""
    if not np.iscomplexobj(image):
        return place_in_field_of_view(image, centre, size)
    real = place_in_field_of_view(image.real, centre, size)
    imag = place_in_field_of_view(image.imag, centre, size)
    return (real + 1j * imag).astype(np.complex64)


def scan_slices(
    volume: KspaceVolume | ImageVolume, size: int, pixel_mm: float, label: str
) -> ScanSlices:
    """Every slice of ``volume`` on the bank grid (``label`` names the input in errors)."""
    if isinstance(volume, KspaceVolume):
        images = coil_combined(volume, label)
        coils = volume.kspace.shape[1]
        combination = "ESPIRiT maps + SENSE combination" if volume.multicoil else "inverse FFT"
        content = f"fully sampled k-space, {coils} coil{'s' if coils > 1 else ''}, {combination}"
    else:
        images = np.asarray(volume.images, dtype=np.float32)
        content = "magnitude images"
    shape = (images.shape[1], images.shape[2])
    spacing, geometry = input_pixel_mm(volume.pixel_spacing_mm, shape, size, pixel_mm)
    resampled = [on_grid(image, spacing, pixel_mm) for image in images]
    level = FOREGROUND_FRACTION_OF_P99 * float(np.percentile(np.abs(np.stack(resampled)), 99))
    head = np.stack([np.abs(image) > level for image in resampled])
    if level > 0 and head.any():
        centre = head_centre(head, label)
        geometry += ", centred on the volume's foreground (zero padding)"
    else:
        centre = (resampled[0].shape[0] / 2.0, resampled[0].shape[1] / 2.0)
    return ScanSlices(
        images=np.stack([placed(image, centre, size) for image in resampled]),
        measured_phase=isinstance(volume, KspaceVolume),
        content=content,
        pixel_mm_in=volume.pixel_spacing_mm,
        geometry=geometry,
        foreground_level=level,
    )


def foreground_fraction(image: np.ndarray, level: float) -> float:
    """Fraction of the pixels of ``image`` with a magnitude above ``level`` (0 when level is 0)."""
    return float(np.mean(np.abs(image) > level)) if level > 0 else 0.0
