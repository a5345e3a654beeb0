"""DICOM series: write -> read round trips, slice order, rescale, compression, enhanced MR,
pydicom's own MR test files, and every bad input."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from services.recon.errors import InputError
from services.recon.io import RESEARCH_USE_ONLY_DICOM, read_dicom_series, write_dicom_series

PHANTOM_SCALE = (100.0, -20.0)


def written_values(io_phantom: np.ndarray) -> np.ndarray:
    return io_phantom * PHANTOM_SCALE[0] + PHANTOM_SCALE[1]


def rescale_tolerance(values: np.ndarray) -> float:
    return float(values.max() - values.min()) / 65535


def test_series_round_trip(io_dicom_series_dir: Path, io_phantom: np.ndarray) -> None:
    volume = read_dicom_series(io_dicom_series_dir)
    expected = written_values(io_phantom)
    assert volume.images.dtype == np.float32 and volume.images.shape == (3, 32, 32)
    np.testing.assert_allclose(volume.images, expected, atol=rescale_tolerance(expected) + 1e-4)
    assert volume.pixel_spacing_mm == (1.25, 1.5)
    assert volume.slice_thickness_mm == 3.0
    assert volume.positions is not None and volume.orientation is not None
    np.testing.assert_allclose(np.diff(volume.positions[:, 2]), 3.0)
    np.testing.assert_allclose(volume.orientation, [1, 0, 0, 0, 1, 0])
    assert volume.affine is not None
    np.testing.assert_allclose(np.diag(volume.affine), [-1.5, -1.25, 3.0, 1.0])
    reference = volume.dicom_reference
    assert reference is not None
    assert reference["Modality"] == "MR"
    assert reference["PatientName"] == "Phantom^Synthetic"
    assert {"StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"} <= set(reference)
    assert len(reference["SourceInstances"]) == 3


def test_written_files_are_valid_mr_with_notice(io_dicom_series_dir: Path) -> None:
    files = sorted(io_dicom_series_dir.glob("*.dcm"))
    assert [f.name for f in files] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]
    dataset = pydicom.dcmread(files[0])
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.SOPClassUID == MRImageStorage
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert dataset.Modality == "MR"
    assert list(dataset.ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]
    assert dataset.ImageComments == RESEARCH_USE_ONLY_DICOM
    assert dataset.SeriesDescription.endswith(RESEARCH_USE_ONLY_DICOM)
    assert dataset.BitsAllocated == 16 and dataset.PixelRepresentation == 0
    assert dataset.pixel_array.dtype == np.uint16
    assert float(dataset.RescaleSlope) > 0
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == 3


def test_uids_are_deterministic_with_a_seed(
    tmp_path: Path, io_phantom: np.ndarray, io_dicom_series_dir: Path
) -> None:
    again = write_dicom_series(
        tmp_path / "again",
        written_values(io_phantom),
        (1.25, 1.5),
        3.0,
        series_description="phantom",
        seed_for_uids=7,
    )
    first = pydicom.dcmread(io_dicom_series_dir / "IM0002.dcm")
    second = pydicom.dcmread(again[1])
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
    ):
        assert first[keyword].value == second[keyword].value
    other = write_dicom_series(tmp_path / "other", io_phantom, (1.0, 1.0), 3.0, seed_for_uids=8)
    assert pydicom.dcmread(other[1]).SOPInstanceUID != first.SOPInstanceUID
    unseeded = write_dicom_series(tmp_path / "unseeded", io_phantom, (1.0, 1.0), 3.0)
    assert pydicom.dcmread(unseeded[1]).SOPInstanceUID != first.SOPInstanceUID


def test_slices_are_ordered_by_position_not_by_file_name(
    tmp_path: Path, io_dicom_series_dir: Path, io_phantom: np.ndarray
) -> None:
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    files = sorted(io_dicom_series_dir.glob("*.dcm"))
    names = ["c.dcm", "a.dcm", "b"]  # no order in names, no suffix on one
    random.Random(0).shuffle(names)
    for file, name in zip(files, names, strict=True):
        dataset = pydicom.dcmread(file)
        dataset.InstanceNumber = 7 - dataset.InstanceNumber  # misleading instance numbers
        dataset.save_as(shuffled / name)
    (shuffled / "README.txt").write_text("exported by the phantom scanner")
    leftover = shuffled / ".IM.tmp-crashed"  # staging folder of an interrupted write: ignored
    write_dicom_series(leftover, io_phantom[:1], (1.0, 1.0), 3.0)
    volume = read_dicom_series(shuffled)
    expected = written_values(io_phantom)
    np.testing.assert_allclose(volume.images, expected, atol=rescale_tolerance(expected) + 1e-4)


def test_instance_number_orders_slices_without_positions(
    tmp_path: Path, io_dicom_series_dir: Path, io_phantom: np.ndarray
) -> None:
    files = sorted(io_dicom_series_dir.glob("*.dcm"))
    stripped = []
    for index, file in enumerate(reversed(files)):
        dataset = pydicom.dcmread(file)
        del dataset.ImagePositionPatient
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path)
        stripped.append(path)
    volume = read_dicom_series(stripped)
    assert volume.positions is None and volume.affine is None
    expected = written_values(io_phantom)
    np.testing.assert_allclose(volume.images, expected, atol=rescale_tolerance(expected) + 1e-4)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    images = np.linspace(-1000.0, 3000.0, 2 * 8 * 8).reshape(2, 8, 8)
    files = write_dicom_series(tmp_path, images, (1.0, 1.0), 2.0)
    dataset = pydicom.dcmread(files[0])
    assert float(dataset.RescaleIntercept) == pytest.approx(-1000.0)
    assert float(dataset.RescaleSlope) == pytest.approx(4000.0 / 65535)
    volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.images, images, atol=4000.0 / 65535)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntax_round_trip(
    tmp_path: Path, io_phantom: np.ndarray, syntax: str
) -> None:
    images = written_values(io_phantom)
    files = write_dicom_series(tmp_path, images, (1.0, 1.0), 3.0, transfer_syntax=syntax)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    volume = read_dicom_series(files)
    np.testing.assert_allclose(volume.images, images, atol=rescale_tolerance(images) + 1e-4)


def test_derived_series_joins_the_input_study(tmp_path: Path, io_dicom_series_dir: Path) -> None:
    source = read_dicom_series(io_dicom_series_dir)
    assert source.dicom_reference is not None
    files = write_dicom_series(
        tmp_path,
        source.images * 0.5,
        source.pixel_spacing_mm or (1.0, 1.0),
        3.0,
        reference=source.dicom_reference,
        series_description="mrdiff diffusion recon",
        positions=source.positions,
        orientation=source.orientation,
        seed_for_uids=1,
    )
    derived = pydicom.dcmread(files[0])
    reference = source.dicom_reference
    assert list(derived.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert derived.StudyInstanceUID == reference["StudyInstanceUID"]
    assert derived.FrameOfReferenceUID == reference["FrameOfReferenceUID"]
    assert derived.SeriesInstanceUID != reference["SeriesInstanceUID"]
    assert derived.PatientID == reference["PatientID"]
    assert derived.SeriesDescription == f"mrdiff diffusion recon {RESEARCH_USE_ONLY_DICOM}"
    assert (
        derived.SourceImageSequence[0].ReferencedSOPInstanceUID
        == reference["SourceInstances"][0]["SOPInstanceUID"]
    )
    back = read_dicom_series(tmp_path)
    assert back.positions is not None and source.positions is not None
    np.testing.assert_allclose(back.positions, source.positions, atol=1e-4)


def test_secondary_capture_for_derived_maps(tmp_path: Path, io_phantom: np.ndarray) -> None:
    files = write_dicom_series(
        tmp_path,
        io_phantom,
        (1.0, 1.0),
        3.0,
        reference={},
        sop_class="secondary_capture",
        series_description="x" * 80,
    )
    dataset = pydicom.dcmread(files[0])
    assert dataset.SOPClassUID == SecondaryCaptureImageStorage
    assert len(dataset.SeriesDescription) <= 64
    assert dataset.SeriesDescription.endswith(RESEARCH_USE_ONLY_DICOM)
    assert read_dicom_series(files).images.shape == (3, 32, 32)


def enhanced_mr_file(path: Path, stored: np.ndarray, frame_slices: list[int]) -> None:
    """Enhanced MR Image Storage: coronal frames, stored out of order, shared rescale."""
    frames, rows, columns = stored.shape
    dataset = Dataset()
    dataset.SOPClassUID = EnhancedMRImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.FrameOfReferenceUID = generate_uid()
    dataset.Modality = "MR"
    dataset.PatientName = "Phantom^Enhanced"
    dataset.InstanceNumber = 1
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = rows, columns, frames
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    shared = Dataset()
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: normal is +y
    measures.PixelSpacing = [0.9, 0.8]
    measures.SliceThickness = 2.5
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 0.5, -10, "US"
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    dataset.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for slice_index in frame_slices:
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [-10.0, 2.5 * slice_index - 5.0, 20.0]
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    dataset.PixelData = stored.astype(np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    dataset.preamble = b"\0" * 128
    dataset.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_mr(tmp_path: Path, io_phantom: np.ndarray) -> None:
    slices = (io_phantom * 1000).astype(np.uint16)
    frame_slices = [2, 0, 1]
    path = tmp_path / "enhanced.dcm"
    enhanced_mr_file(path, slices[frame_slices], frame_slices)
    volume = read_dicom_series(path)
    np.testing.assert_allclose(volume.images, slices * 0.5 - 10, atol=1e-4)
    assert volume.pixel_spacing_mm == (0.9, 0.8)
    assert volume.slice_thickness_mm == 2.5
    assert volume.positions is not None
    np.testing.assert_allclose(volume.positions[:, 1], [-5.0, -2.5, 0.0])
    assert volume.dicom_reference is not None
    assert [s["FrameNumber"] for s in volume.dicom_reference["SourceInstances"]] == [2, 3, 1]


MR_TEST_FILES = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR2_J2KI.dcm",
    "MR2_J2KR.dcm",
    "emri_small.dcm",
]


def local_testdata(name: str) -> Path:
    """pydicom test file shipped in the wheel; skip (never download) when it is not."""
    path = get_testdata_file(name, download=False)
    if path is None or not Path(str(path)).is_file():
        pytest.skip(f"{name} is not shipped in the pydicom wheel (external test data)")
    return Path(str(path))


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
@pytest.mark.parametrize("name", MR_TEST_FILES)
def test_pydicom_mr_test_files_load(name: str) -> None:
    path = local_testdata(name)
    volume = read_dicom_series(path)
    assert volume.images.ndim == 3 and volume.images.dtype == np.float32
    assert np.isfinite(volume.images).all() and volume.images.max() > volume.images.min()
    assert volume.source == path.name
    if name.startswith("MR_small"):
        reference = read_dicom_series(local_testdata("MR_small.dcm"))
        np.testing.assert_array_equal(volume.images, reference.images)
        assert volume.pixel_spacing_mm is not None


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "CT_small.dcm"])
def test_other_shipped_grayscale_files_decode(name: str) -> None:
    """JPEG 2000 and JPEG extended (8-bit) decode through the installed plugins."""
    volume = read_dicom_series(local_testdata(name))
    assert volume.images.shape[0] == 1 and np.isfinite(volume.images).all()
    assert volume.images.max() > volume.images.min()


def test_file_without_preamble_or_meta_header(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(local_testdata("MR_small.dcm"))
    bare = Dataset()
    bare.update(dataset)  # data set only: no 128-byte preamble, no DICM, no file meta
    path = tmp_path / "bare"
    pydicom.dcmwrite(path, bare, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    volume = read_dicom_series(path)
    np.testing.assert_array_equal(volume.images[0], dataset.pixel_array.astype(np.float32))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("SC_rgb_rle.dcm", "colour images are not supported"),
        ("rtplan.dcm", "DICOM without pixel data"),
        ("MR_truncated.dcm", "MR_truncated.dcm: cannot decode pixel data"),
    ],
)
def test_shipped_files_that_cannot_be_used(name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_dicom_series(local_testdata(name))


def test_truncated_pixel_data_is_an_input_error() -> None:
    path = local_testdata("MR_truncated.dcm")
    with pytest.raises(InputError, match=r"MR_truncated.dcm: cannot decode pixel data"):
        read_dicom_series(path)


def test_mixed_series_need_a_choice(
    tmp_path: Path, io_dicom_series_dir: Path, io_phantom: np.ndarray
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(io_dicom_series_dir, folder)
    write_dicom_series(folder / "second", io_phantom[:2], (1.0, 1.0), 3.0)
    message = "mixed series: 2 series in mixed; pick one with series_uid"
    with pytest.raises(InputError, match=message):
        read_dicom_series(folder)
    wanted = pydicom.dcmread(folder / "second" / "IM0001.dcm").SeriesInstanceUID
    assert read_dicom_series(folder, series_uid=wanted).images.shape == (2, 32, 32)
    with pytest.raises(InputError, match=r"series 1.2.3 not found"):
        read_dicom_series(folder, series_uid="1.2.3")


def test_bad_dicom_inputs(tmp_path: Path, io_dicom_series_dir: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.touch()
    with pytest.raises(InputError, match=r"empty.dcm: empty file"):
        read_dicom_series(empty)
    text = tmp_path / "text.dcm"
    text.write_text("this is not DICOM at all")
    with pytest.raises(InputError, match=r"text.dcm: not"):
        read_dicom_series(text)
    no_pixels = tmp_path / "no_pixels.dcm"
    dataset = pydicom.dcmread(io_dicom_series_dir / "IM0001.dcm")
    del dataset.PixelData
    dataset.save_as(no_pixels)
    with pytest.raises(InputError, match="DICOM without pixel data"):
        read_dicom_series(no_pixels)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("nothing here")
    (junk / "b.dcm").touch()
    with pytest.raises(InputError, match="junk: no readable DICOM files"):
        read_dicom_series(junk)
    with pytest.raises(InputError, match="no such file"):
        read_dicom_series(tmp_path / "absent.dcm")


def test_inconsistent_matrix_within_a_series(tmp_path: Path, io_dicom_series_dir: Path) -> None:
    files = sorted(io_dicom_series_dir.glob("*.dcm"))
    shutil.copy(files[0], tmp_path / "a.dcm")
    dataset = pydicom.dcmread(files[1])
    dataset.Rows, dataset.Columns = 16, 64
    dataset.save_as(tmp_path / "b.dcm")
    with pytest.raises(InputError, match="inconsistent rows/columns"):
        read_dicom_series(tmp_path)


def test_writer_rejects_bad_images_and_existing_files(
    tmp_path: Path, io_phantom: np.ndarray
) -> None:
    bad = io_phantom.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(tmp_path / "out", bad, (1.0, 1.0), 3.0)
    with pytest.raises(InputError, match="spacing"):
        write_dicom_series(tmp_path / "out", io_phantom, (0.0, 1.0), 3.0)
    assert not (tmp_path / "out").exists()
    files = write_dicom_series(tmp_path / "out", io_phantom, (1.0, 1.0), 3.0)
    with pytest.raises(InputError, match=r"IM0001.dcm: output already exists"):
        write_dicom_series(tmp_path / "out", io_phantom, (1.0, 1.0), 3.0)
    write_dicom_series(tmp_path / "out", io_phantom, (1.0, 1.0), 3.0, overwrite=True)
    assert sorted((tmp_path / "out").iterdir()) == files
