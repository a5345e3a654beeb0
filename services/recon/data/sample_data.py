"""Demo inputs, made offline and deterministically from nilearn's MNI152 template.

:func:`write_sample_data` writes

- ``sample_brain_8coil_4x.h5``: fastMRI-style multi-coil HDF5. Eight axial slices of the
  ICBM152 2009a T1 average (skull-stripped, as nilearn ships it) at 2 mm, 128 x 128, through
  eight normalised birdcage coil maps, with a smooth random phase and complex noise at SNR 40
  (:func:`services.recon.physics.simulate_kspace`); ``kspace`` holds only the samples of a 4x
  1-D random column mask (the rest are zero, as in an undersampled acquisition), ``mask`` says
  which, and ``reconstruction_rss`` is the root-sum-of-squares image of the fully sampled
  k-space, the reference. Attribute ``simulated_kspace`` is true.
- ``sample_brain_dicom/IM0001.dcm`` ...: the reference magnitudes as an MR DICOM series with
  valid UIDs and patient geometry (axial, 2 mm pixels, slices 8 mm apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from services.recon.coils import birdcage_maps, rss
from services.recon.data.sampling import make_plane, plane_world_points, sample_trilinear
from services.recon.data.templates import MNI_LICENCE, load_source
from services.recon.io import KspaceVolume, atomic_output, write_dicom_series, write_kspace_h5
from services.recon.masks import make_mask
from services.recon.physics import ifft2c, simulate_kspace

SAMPLE_H5_NAME = "sample_brain_8coil_4x.h5"
SAMPLE_DICOM_DIR = "sample_brain_dicom"
SIZE = 128
PIXEL_MM = 2.0
N_COILS = 8
ACCELERATION = 4.0
CENTER_FRACTION = 0.08
SNR = 40.0
SLICE_Z_MM: tuple[float, ...] = (-12.0, -4.0, 4.0, 12.0, 20.0, 28.0, 36.0, 44.0)
"""MNI z of the eight axial slices: from the temporal lobes through the ventricles."""
SLICE_CENTRE_MM = (0.0, -18.0)
SOURCE_DESCRIPTION = (
    "nilearn ICBM152 2009a nonlinear T1 average (skull-stripped), resampled to 2 mm"
)


class SampleData(NamedTuple):
    """Paths written by :func:`write_sample_data`."""

    kspace_h5: Path
    dicom_dir: Path
    dicom_files: list[Path]


def template_slices(
    size: int = SIZE, pixel_mm: float = PIXEL_MM, z_mm: tuple[float, ...] = SLICE_Z_MM
) -> np.ndarray:
    """Axial slices (S, size, size) of the MNI152 2009a T1, 99th percentile 1.

    Each pixel is the mean of a 2 x 2 block of 1 mm-spaced trilinear samples for 2 mm pixels
    (in general ``oversample`` x ``oversample``), which avoids aliasing the 1 mm template.
    Display orientation as in :mod:`services.recon.data.sampling` (radiological).
    """
    source = load_source("mni152_2009a_t1")
    oversample = max(1, round(pixel_mm / source.voxel_mm))
    fine = size * oversample
    slices = []
    for z in z_mm:
        centre = np.array([SLICE_CENTRE_MM[0], SLICE_CENTRE_MM[1], z])
        plane = make_plane("axial", centre, fine, pixel_mm / oversample)
        values = sample_trilinear(source, plane_world_points(plane))[..., 0]
        slices.append(values.reshape(size, oversample, size, oversample).mean(axis=(1, 3)))
    volume = np.clip(np.stack(slices), 0.0, None).astype(np.float32)
    return volume / max(float(np.percentile(volume, 99)), 1e-8)


def dicom_geometry(
    size: int = SIZE, pixel_mm: float = PIXEL_MM, z_mm: tuple[float, ...] = SLICE_Z_MM
) -> tuple[np.ndarray, np.ndarray]:
    """DICOM ImagePositionPatient (S, 3) and ImageOrientationPatient (6,) in LPS mm.

    Rows run anterior to posterior and columns right to left (radiological axial), i.e. the
    row direction is +x and the column direction +y in LPS.
    """
    half = (size - 1) / 2.0 * pixel_mm
    x_ras, y_ras = SLICE_CENTRE_MM[0] + half, SLICE_CENTRE_MM[1] + half
    positions = np.array([[-x_ras, -y_ras, z] for z in z_mm])
    orientation = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return positions, orientation


def simulate_sample_kspace(
    images: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fully sampled 8-coil k-space (S, 8, H, W), the 4x mask (H, W) and the RSS reference."""
    height, width = images.shape[1:]
    maps = birdcage_maps(N_COILS, (height, width))
    slice_seeds = np.random.SeedSequence(seed).generate_state(len(images))
    kspace = np.stack(
        [
            simulate_kspace(image, SNR, int(slice_seed), maps)
            for image, slice_seed in zip(images, slice_seeds, strict=True)
        ]
    )
    mask = make_mask("random1d", (height, width), ACCELERATION, CENTER_FRACTION, seed)
    reference = np.asarray(rss(ifft2c(kspace), axis=1), dtype=np.float32)
    return kspace.astype(np.complex64), np.asarray(mask, dtype=bool), reference


def write_sample_data(directory: str | Path, seed: int = 0, overwrite: bool = False) -> SampleData:
    """Write the demo HDF5 and DICOM series into ``directory`` (see the module docstring)."""
    folder = Path(directory)
    images = template_slices()
    kspace, mask, reference = simulate_sample_kspace(images, seed)
    slices = len(images)
    volume = KspaceVolume(
        kspace=kspace * mask[None, None],
        multicoil=True,
        mask=np.broadcast_to(mask, (slices, *mask.shape)).copy(),
        attrs={
            "seed": seed,
            "source": SOURCE_DESCRIPTION,
            "source_licence": MNI_LICENCE,
            "coil_maps": f"sigpy birdcage, {N_COILS} coils, unit sum of squares",
            "snr": SNR,
            "mask_kind": "random1d",
            "acceleration": ACCELERATION,
            "center_fraction": CENTER_FRACTION,
            "slice_z_mm": list(SLICE_Z_MM),
            "reference": "reconstruction_rss: RSS of the fully sampled noisy k-space",
        },
        simulated=True,
        pixel_spacing_mm=(PIXEL_MM, PIXEL_MM),
        source=SAMPLE_H5_NAME,
    )
    target = folder / SAMPLE_H5_NAME
    with atomic_output(target, overwrite) as temporary:
        write_kspace_h5(temporary, volume, overwrite=True)
        with h5py.File(temporary, "a") as h5:
            h5.create_dataset("reconstruction_rss", data=reference)
    positions, orientation = dicom_geometry()
    dicom_dir = folder / SAMPLE_DICOM_DIR
    dicom_files = write_dicom_series(
        dicom_dir,
        reference,
        pixel_spacing_mm=(PIXEL_MM, PIXEL_MM),
        slice_thickness_mm=PIXEL_MM,
        series_description="mrdiff sample (simulated)",
        seed_for_uids=seed,
        positions=positions,
        orientation=orientation,
        overwrite=overwrite,
    )
    return SampleData(kspace_h5=target, dicom_dir=dicom_dir, dicom_files=dicom_files)
