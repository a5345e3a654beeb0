"""Shared unit-test inputs: small synthetic io files (fastMRI style) and a tiny random prior."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from services.recon.diffusion import DiffusionSchedule
from services.recon.io import write_dicom_series, write_ismrmrd
from services.recon.prior import LoadedPrior
from services.recon.unet import UNet, UNetConfig, to_device

IO_SLICES = 3
IO_SIZE = 32


def fft2c_numpy(image: np.ndarray) -> np.ndarray:
    """Centered orthonormal 2-D FFT over the last two axes (design.md convention)."""
    axes = (-2, -1)
    shifted = np.fft.ifftshift(image, axes=axes)
    return np.fft.fftshift(np.fft.fft2(shifted, axes=axes, norm="ortho"), axes=axes)


def ifft2c_numpy(kspace: np.ndarray) -> np.ndarray:
    """Centered orthonormal inverse 2-D FFT over the last two axes."""
    axes = (-2, -1)
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


def ellipse_phantom(
    slices: int = IO_SLICES, height: int = IO_SIZE, width: int = IO_SIZE
) -> np.ndarray:
    """(slices, H, W) float32: a bright ellipse with an inner lesion that moves per slice."""
    rows, columns = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    volume = np.zeros((slices, height, width), dtype=np.float32)
    for index in range(slices):
        head = (rows / 0.8) ** 2 + (columns / 0.6) ** 2 <= 1
        spot = (rows - 0.2 * (index - 1)) ** 2 + (columns + 0.1) ** 2 <= 0.04
        volume[index] = 0.6 * head + 0.4 * spot + 0.05 * index
    return volume


@pytest.fixture(scope="session")
def centered_fft2() -> Callable[[np.ndarray], np.ndarray]:
    """The centered orthonormal 2-D FFT, as a fixture so tests need not import conftest."""
    return fft2c_numpy


@pytest.fixture(scope="session")
def centered_ifft2() -> Callable[[np.ndarray], np.ndarray]:
    """The centered orthonormal inverse 2-D FFT."""
    return ifft2c_numpy


@pytest.fixture(scope="session")
def io_phantom() -> np.ndarray:
    """(3, 32, 32) magnitude phantom whose slices all differ."""
    return ellipse_phantom()


@pytest.fixture(scope="session")
def io_coil_images(io_phantom: np.ndarray) -> np.ndarray:
    """(3, 4, 32, 32) complex coil images: phantom x smooth coil maps x smooth phase."""
    height, width = io_phantom.shape[1:]
    rows, columns = np.mgrid[0:height, 0:width] / max(height, width)
    centres = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    maps = np.stack(
        [
            np.exp(-((rows - r) ** 2 + (columns - c) ** 2)) * np.exp(1j * (r + 2 * c))
            for r, c in centres
        ]
    )
    phase = np.exp(1j * 0.5 * (rows - columns))
    return (io_phantom[:, None] * maps[None] * phase).astype(np.complex64)


@pytest.fixture(scope="session")
def io_coil_kspace(io_coil_images: np.ndarray) -> np.ndarray:
    """Centered k-space of :func:`io_coil_images`, (3, 4, 32, 32) complex64."""
    return fft2c_numpy(io_coil_images).astype(np.complex64)


@pytest.fixture(scope="session")
def io_line_mask() -> np.ndarray:
    """(3, 32, 32) column mask: every other phase line plus the 6 central ones, per slice."""
    mask = np.zeros((IO_SLICES, IO_SIZE, IO_SIZE), dtype=bool)
    mask[:, :, ::2] = True
    mask[:, :, IO_SIZE // 2 - 3 : IO_SIZE // 2 + 3] = True
    mask[1, :, 1] = True  # slices differ
    return mask


@pytest.fixture(scope="session")
def io_ismrmrd_file(
    tmp_path_factory: pytest.TempPathFactory, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> Path:
    """Multi-coil ISMRMRD file with 2x readout oversampling, written once."""
    path = tmp_path_factory.mktemp("ismrmrd") / "raw.h5"
    return write_ismrmrd(
        path, io_coil_kspace, mask=io_line_mask, pixel_spacing_mm=(1.5, 2.0), slice_thickness_mm=4.0
    )


@pytest.fixture(scope="session")
def io_dicom_series_dir(tmp_path_factory: pytest.TempPathFactory, io_phantom: np.ndarray) -> Path:
    """A 3-slice MR series of the phantom (synthetic patient), written once."""
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(
        folder,
        io_phantom * 100.0 - 20.0,
        (1.25, 1.5),
        3.0,
        series_description="phantom",
        seed_for_uids=7,
    )
    return folder


@pytest.fixture(scope="session")
def tiny_prior() -> LoadedPrior:
    """A random network (non-zero head) behind the real loader's interface, T = 100."""
    torch.manual_seed(0)
    config = UNetConfig(channels=(8, 16), norm_groups=4, time_embedding_dim=16)
    model = UNet(config)
    torch.nn.init.normal_(model.head.weight, std=0.05)
    model = to_device(model, "cpu").eval()
    return LoadedPrior(
        model=model,
        config=config,
        schedule=DiffusionSchedule.cosine(100),
        sha256="0" * 64,
        name="tiny-random",
        path=Path("tiny.pt"),
        step=0,
    )
