"""Bad input to `mrdiff reconstruct`: exit code 2, one line naming the problem, no output file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from services.cli import main


def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as handle:
        for name, value in datasets.items():
            handle[name] = value
    return path


def good_kspace(slices: int = 1, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (slices, size, size)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def dicom_file(path: Path, series_uid: str, with_pixels: bool = True) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [2.0, 2.0]
    if with_pixels:
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.arange(256, dtype=np.uint16).reshape(16, 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def no_kspace(tmp: Path) -> Path:
    return write_h5(tmp / "in.h5", image=np.zeros((1, 16, 16), np.float32))


def real_kspace(tmp: Path) -> Path:
    return write_h5(tmp / "in.h5", kspace=np.ones((1, 16, 16), np.float32))


def nan_kspace(tmp: Path) -> Path:
    kspace = good_kspace()
    kspace[0, 3, 3] = np.nan
    return write_h5(tmp / "in.h5", kspace=kspace)


def inf_kspace(tmp: Path) -> Path:
    kspace = good_kspace()
    kspace[0, 2, 2] = np.inf
    return write_h5(tmp / "in.h5", kspace=kspace)


def bad_mask(tmp: Path) -> Path:
    return write_h5(tmp / "in.h5", kspace=good_kspace(), mask=np.ones(7, bool))


def empty_file(tmp: Path) -> Path:
    path = tmp / "in.dcm"
    path.write_bytes(b"")
    return path


def not_dicom(tmp: Path) -> Path:
    path = tmp / "in.dcm"
    path.write_bytes(b"this is not a DICOM file at all" * 10)
    return path


def dicom_without_pixels(tmp: Path) -> Path:
    return dicom_file(tmp / "in.dcm", generate_uid(), with_pixels=False)


def mixed_series(tmp: Path) -> Path:
    folder = tmp / "series"
    folder.mkdir()
    dicom_file(folder / "a.dcm", generate_uid())
    dicom_file(folder / "b.dcm", generate_uid())
    return folder


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "no kspace dataset": (no_kspace, "kspace"),
    "real-valued k-space": (real_kspace, "real"),
    "NaN": (nan_kspace, "nan"),
    "inf": (inf_kspace, "inf"),
    "mask shape": (bad_mask, "mask"),
    "empty file": (empty_file, "empty"),
    "not DICOM": (not_dicom, "dicom"),
    "DICOM without pixel data": (dicom_without_pixels, "pixel data"),
    "mixed series": (mixed_series, "series"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input, expected_word = BAD_INPUTS[case]
    source = make_input(tmp_path)
    out = tmp_path / "out.h5"
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(source), "--out", str(out), "--method", "zero-filled"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    assert expected_word in message.lower(), message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]


def test_existing_output_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_h5(tmp_path / "in.h5", kspace=good_kspace())
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(source), "--out", str(out), "--method", "zero-filled"])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_console_script_reports_one_line(tmp_path: Path) -> None:
    """The installed entry point, run as a real process, prints no traceback."""
    source = real_kspace(tmp_path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "reconstruct",
            str(source),
            "--out",
            str(tmp_path / "out.h5"),
            "--method",
            "zero-filled",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["loud", "-1", "inf", "nan"])
def test_bad_noise_std_exits_2_with_one_line(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_h5(tmp_path / "in.h5", kspace=good_kspace())
    out = tmp_path / "out.h5"
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(source), "--out", str(out), "--noise-std", value])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--noise-std" in message, message
    assert not out.exists()


def test_unknown_option_is_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "export", "--bogus"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "No such option: --bogus" in message and "Traceback" not in message
