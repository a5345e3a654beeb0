"""ISMRMRD raw data: readout oversampling removed, known images round-trip, bad files rejected."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
from ismrmrd.xsd import CreateFromDocument, ToXML, trajectoryType

from services.recon.errors import InputError
from services.recon.io import read_ismrmrd, write_ismrmrd

FFT = Callable[[np.ndarray], np.ndarray]


def edit_header(path: Path, change: Callable[[object], None]) -> None:
    with ismrmrd.Dataset(str(path), "dataset", mode="r+") as dataset:
        header = CreateFromDocument(dataset.read_xml_header())
        change(header)
        dataset.write_xml_header(ToXML(header))


def append(path: Path, data: np.ndarray, flag: int | None = None, **counters: int) -> None:
    with ismrmrd.Dataset(str(path), "dataset", mode="r+") as dataset:
        acquisition = ismrmrd.Acquisition.from_array(data.astype(np.complex64))
        acquisition.center_sample = data.shape[1] // 2
        for name, value in counters.items():
            setattr(acquisition.idx, name, value)
        if flag is not None:
            acquisition.set_flag(flag)
        dataset.append_acquisition(acquisition)


def test_file_holds_oversampled_readouts(io_ismrmrd_file: Path) -> None:
    with ismrmrd.Dataset(str(io_ismrmrd_file), "dataset", mode="r") as dataset:
        header = CreateFromDocument(dataset.read_xml_header())
        first = dataset.read_acquisition(0)
        count = dataset.number_of_acquisitions()
    assert header.encoding[0].encodedSpace.matrixSize.x == 64
    assert header.encoding[0].reconSpace.matrixSize.x == 32
    assert first.data.shape == (4, 64)
    assert count == 3 * 19 + 1  # 16 even + 3 odd central lines per slice, one extra in slice 1


def test_known_image_round_trips_with_oversampling_removed(
    io_ismrmrd_file: Path, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> None:
    volume = read_ismrmrd(io_ismrmrd_file)
    assert volume.kspace.shape == (3, 4, 32, 32)
    assert volume.multicoil is True
    np.testing.assert_array_equal(volume.mask, io_line_mask)
    np.testing.assert_allclose(volume.kspace, io_coil_kspace * io_line_mask[:, None], atol=1e-5)
    assert volume.pixel_spacing_mm == pytest.approx((1.5, 2.0))
    assert volume.attrs["readout_oversampling_removed"] == pytest.approx(2.0)
    assert volume.attrs["trajectory"] == "cartesian"
    assert volume.source == "raw.h5"


def test_fully_sampled_single_coil_image_round_trips(
    tmp_path: Path, io_coil_images: np.ndarray, centered_fft2: FFT, centered_ifft2: FFT
) -> None:
    image = io_coil_images[:, :1]
    path = write_ismrmrd(
        tmp_path / "one.h5",
        centered_fft2(image).astype(np.complex64),
        readout_oversampling=2,
        simulated=True,
    )
    volume = read_ismrmrd(path)
    assert volume.multicoil is False and volume.simulated is True
    assert volume.mask.all()
    np.testing.assert_allclose(centered_ifft2(volume.kspace), image, atol=1e-5)


def test_noise_and_calibration_acquisitions_are_skipped(
    tmp_path: Path, io_ismrmrd_file: Path, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> None:
    path = tmp_path / "with_noise.h5"
    shutil.copy(io_ismrmrd_file, path)
    garbage = np.full((4, 64), 1e6, dtype=np.complex64)
    append(path, garbage, ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    append(path, garbage, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, kspace_encode_step_1=1)
    append(path, garbage, ismrmrd.ACQ_IS_NAVIGATION_DATA, kspace_encode_step_1=3)
    volume = read_ismrmrd(path)
    assert volume.attrs["non_imaging_acquisitions_skipped"] == 3
    np.testing.assert_array_equal(volume.mask, io_line_mask)
    np.testing.assert_allclose(volume.kspace, io_coil_kspace * io_line_mask[:, None], atol=1e-5)


def test_repeated_lines_are_averaged(
    tmp_path: Path, io_ismrmrd_file: Path, io_coil_kspace: np.ndarray
) -> None:
    path = tmp_path / "averages.h5"
    shutil.copy(io_ismrmrd_file, path)
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dataset:
        line = dataset.read_acquisition(0)  # slice 0, phase line 0
    append(path, line.data * 3, average=1, kspace_encode_step_1=0)
    volume = read_ismrmrd(path)
    np.testing.assert_allclose(volume.kspace[0, :, :, 0], 2 * io_coil_kspace[0, :, :, 0], atol=1e-4)


def test_crop_to_recon_space_crops_only_when_asked(
    tmp_path: Path,
    io_coil_images: np.ndarray,
    centered_fft2: FFT,
    centered_ifft2: FFT,
    io_ismrmrd_file: Path,
) -> None:
    path = write_ismrmrd(tmp_path / "full.h5", centered_fft2(io_coil_images).astype(np.complex64))

    def smaller_recon(header: object) -> None:
        header.encoding[0].reconSpace.matrixSize.y = 16  # type: ignore[attr-defined]

    edit_header(path, smaller_recon)
    assert read_ismrmrd(path).kspace.shape == (3, 4, 32, 32)
    cropped = read_ismrmrd(path, crop_to_recon_space=True)
    assert cropped.kspace.shape == (3, 4, 32, 16)
    np.testing.assert_allclose(centered_ifft2(cropped.kspace), io_coil_images[..., 8:24], atol=1e-5)

    undersampled = tmp_path / "under.h5"
    shutil.copy(io_ismrmrd_file, undersampled)
    edit_header(undersampled, smaller_recon)
    with pytest.raises(InputError, match="undersampled"):
        read_ismrmrd(undersampled, crop_to_recon_space=True)


def test_non_cartesian_trajectory_is_rejected(tmp_path: Path, io_ismrmrd_file: Path) -> None:
    path = tmp_path / "radial.h5"
    shutil.copy(io_ismrmrd_file, path)

    def radial(header: object) -> None:
        header.encoding[0].trajectory = trajectoryType.RADIAL  # type: ignore[attr-defined]

    edit_header(path, radial)
    with pytest.raises(InputError, match=r"radial.h5: non-Cartesian trajectory 'radial'"):
        read_ismrmrd(path)


@pytest.mark.parametrize(
    ("counter", "message"),
    [("repetition", "several repetitions"), ("kspace_encode_step_2", "3-D encoding")],
)
def test_unsupported_dimensions_are_rejected(
    tmp_path: Path, io_ismrmrd_file: Path, counter: str, message: str
) -> None:
    path = tmp_path / "dims.h5"
    shutil.copy(io_ismrmrd_file, path)
    append(path, np.ones((4, 64)), **{counter: 1})
    with pytest.raises(InputError, match=message):
        read_ismrmrd(path)


def test_files_that_are_not_ismrmrd(tmp_path: Path, io_ismrmrd_file: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5.create_dataset("kspace", data=np.ones((1, 4, 4), np.complex64))
    with pytest.raises(InputError, match=r"plain.h5: no ISMRMRD `dataset` group"):
        read_ismrmrd(plain)
    only_noise = tmp_path / "noise.h5"
    with h5py.File(only_noise, "w") as h5, h5py.File(io_ismrmrd_file, "r") as source:
        h5.create_group("dataset")
        source.copy("dataset/xml", h5["dataset"])
    append(only_noise, np.ones((4, 64)), ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    with pytest.raises(InputError, match="no imaging acquisitions"):
        read_ismrmrd(only_noise)
    no_header = tmp_path / "no_header.h5"
    with h5py.File(no_header, "w") as h5:
        h5.create_group("dataset")
    with pytest.raises(InputError, match="without an XML header"):
        read_ismrmrd(no_header)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_ismrmrd(text)


def test_writer_rejects_masks_that_are_not_lines(
    tmp_path: Path, io_coil_kspace: np.ndarray
) -> None:
    mask = np.zeros((3, 32, 32), dtype=bool)
    mask[:, 5, 5] = True
    with pytest.raises(InputError, match="constant along the readout"):
        write_ismrmrd(tmp_path / "bad.h5", io_coil_kspace, mask=mask)
    with pytest.raises(InputError, match="complex"):
        write_ismrmrd(tmp_path / "bad.h5", np.abs(io_coil_kspace))
    assert list(tmp_path.iterdir()) == []


def test_non_finite_samples_are_rejected(tmp_path: Path, io_ismrmrd_file: Path) -> None:
    path = tmp_path / "nan.h5"
    shutil.copy(io_ismrmrd_file, path)
    append(path, np.full((4, 64), np.nan), kspace_encode_step_1=1)
    with pytest.raises(InputError, match=r"nan\.h5: acquisition \d+ contains NaN or inf"):
        read_ismrmrd(path)
