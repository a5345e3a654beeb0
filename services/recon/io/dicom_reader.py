"""DICOM image series -> :class:`ImageVolume` (pydicom).

Files are grouped by SeriesInstanceUID and slices ordered by their position along the slice
normal (ImageOrientationPatient row x column, dotted with ImagePositionPatient; PS3.3 C.7.6.2),
falling back to InstanceNumber. Enhanced multi-frame MR (PS3.3 C.7.6.16) takes positions from
the per-frame and orientation/spacing/rescale from the shared functional groups. Compressed
transfer syntaxes decode through the installed pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.recon.errors import InputError
from services.recon.io.geometry import affine_from_planes, slice_normal
from services.recon.io.input_files import require_file
from services.recon.io.volumes import ImageVolume

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
REFERENCE_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "Modality",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "PatientPosition",
    "MagneticFieldStrength",
)
"""Identifiers a derived series needs to join the input's study (kept out of logs)."""

DicomPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass
class _Frame:
    """One 2-D image: a classic single-frame file, or one frame of a multi-frame file."""

    dataset: Dataset
    file: Path
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slope: float
    intercept: float
    instance_number: int


def read_dicom_series(paths: DicomPaths, series_uid: str | None = None) -> ImageVolume:
    """Read one DICOM series from a folder, a file or a list of files.

    Raises :class:`InputError` for empty or non-DICOM files, DICOM without pixel data, a folder
    without readable DICOM images, several series without ``series_uid``, and inconsistent
    rows/columns within the series.
    """
    files, label, strict = _collect_files(paths)
    datasets = [(file, dataset) for file in files if (dataset := _read(file, strict)) is not None]
    if not datasets:
        raise InputError(f"{label}: no readable DICOM files")
    images = [(file, ds) for file, ds in datasets if _has_pixels(ds)]
    if not images:
        raise InputError(f"{label}: DICOM without pixel data ({datasets[0][0].name})")
    series = _pick_series(images, series_uid, label)
    frames = [frame for file, ds in series for frame in _frames(file, ds)]
    _check_matrix(frames, label)
    frames = _sorted(frames)
    pixels = _decode(frames)
    return _volume(frames, pixels, label)


def _collect_files(paths: DicomPaths) -> tuple[list[Path], str, bool]:
    """(files, label for messages, strict): folder contents are read leniently."""
    if isinstance(paths, str | os.PathLike):
        root = Path(paths)
        if root.is_dir():
            files = sorted(
                path
                for path in root.rglob("*")
                if path.is_file()
                and path.name != "DICOMDIR"
                and not any(part.startswith(".") for part in path.relative_to(root).parts)
            )
            return files, root.name, False
        return [require_file(root)], root.name, True
    files = [require_file(path) for path in paths]
    if not files:
        raise InputError("no DICOM files given")
    label = files[0].name if len(files) == 1 else f"{files[0].name} and {len(files) - 1} more"
    return files, label, True


def _read(file: Path, strict: bool) -> Dataset | None:
    """Header (pixel data deferred) of a DICOM file; ``None`` for skipped non-DICOM files."""
    try:
        if file.stat().st_size == 0:
            raise InputError(f"{file.name}: empty file")
        try:
            return pydicom.dcmread(file, defer_size="256 KB")
        except InvalidDicomError:
            dataset = pydicom.dcmread(file, defer_size="256 KB", force=True)
            if "SOPClassUID" not in dataset:
                raise InputError(f"{file.name}: not a DICOM file") from None
            _name_parsed_transfer_syntax(dataset)
            return dataset
    except InputError:
        if strict:
            raise
        return None
    except Exception as error:
        if strict:
            reason = _first_line(error)
            raise InputError(f"{file.name}: not a readable DICOM file ({reason})") from error
        return None


def _name_parsed_transfer_syntax(dataset: Dataset) -> None:
    """Files without a meta header (no preamble): record the encoding pydicom parsed them with."""
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little = dataset.original_encoding
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def _has_pixels(dataset: Dataset) -> bool:
    return any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS)


def _pick_series(
    images: list[tuple[Path, Dataset]], series_uid: str | None, label: str
) -> list[tuple[Path, Dataset]]:
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for file, dataset in images:
        groups.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((file, dataset))
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(
                f"{label}: series {series_uid} not found ({len(groups)} series present)"
            )
        return groups[series_uid]
    if len(groups) > 1:
        raise InputError(f"mixed series: {len(groups)} series in {label}; pick one with series_uid")
    return next(iter(groups.values()))


def _frames(file: Path, dataset: Dataset) -> list[_Frame]:
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{file.name}: colour images are not supported (SamplesPerPixel != 1)")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    instance = int(dataset.get("InstanceNumber", 0) or 0)
    if count == 1 and "PerFrameFunctionalGroupsSequence" not in dataset:
        return [
            _Frame(
                dataset=dataset,
                file=file,
                frame=None,
                position=_floats(dataset.get("ImagePositionPatient"), 3),
                orientation=_floats(dataset.get("ImageOrientationPatient"), 6),
                pixel_spacing=_spacing(dataset.get("PixelSpacing")),
                thickness=_optional_float(dataset.get("SliceThickness")),
                slope=float(dataset.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(dataset.get("RescaleIntercept", 0.0) or 0.0),
                instance_number=instance,
            )
        ]
    return [_enhanced_frame(file, dataset, index, instance) for index in range(count)]


def _enhanced_frame(file: Path, dataset: Dataset, index: int, instance: int) -> _Frame:
    def lookup(sequence: str, keyword: str) -> Any:
        """Per-frame functional group first, then shared, then the top level."""
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        shared = dataset.get("SharedFunctionalGroupsSequence")
        for groups in (
            per_frame[index] if per_frame and index < len(per_frame) else None,
            shared[0] if shared else None,
        ):
            items = groups.get(sequence) if groups is not None else None
            if items and items[0].get(keyword) is not None:
                return items[0].get(keyword)
        return dataset.get(keyword)

    slope = lookup("PixelValueTransformationSequence", "RescaleSlope")
    intercept = lookup("PixelValueTransformationSequence", "RescaleIntercept")
    return _Frame(
        dataset=dataset,
        file=file,
        frame=index,
        position=_floats(lookup("PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_floats(lookup("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        pixel_spacing=_spacing(lookup("PixelMeasuresSequence", "PixelSpacing")),
        thickness=_optional_float(lookup("PixelMeasuresSequence", "SliceThickness")),
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
        instance_number=instance,
    )


def _check_matrix(frames: list[_Frame], label: str) -> None:
    sizes = {(int(frame.dataset.Rows), int(frame.dataset.Columns)) for frame in frames}
    if len(sizes) > 1:
        raise InputError(f"{label}: inconsistent rows/columns within the series: {sorted(sizes)}")


def _sorted(frames: list[_Frame]) -> list[_Frame]:
    """Order by position along the slice normal; else by InstanceNumber and frame index."""
    positions = [frame.position for frame in frames if frame.position is not None]
    orientation = frames[0].orientation
    if len(positions) == len(frames) and orientation is not None:
        distances = np.stack(positions) @ slice_normal(orientation)
        if len(set(np.round(distances, 4))) == len(frames):
            order = np.argsort(distances, kind="stable")
            return [frames[index] for index in order]
    return sorted(frames, key=lambda frame: (frame.instance_number, frame.frame or 0))


def _decode(frames: list[_Frame]) -> np.ndarray:
    """Pixel values with each frame's rescale slope/intercept applied, float32 (S, H, W)."""
    decoded: dict[int, np.ndarray] = {}
    planes = []
    for frame in frames:
        key = id(frame.dataset)
        if key not in decoded:
            decoded[key] = _pixel_array(frame)
        stored = decoded[key]
        plane = stored[frame.frame] if frame.frame is not None and stored.ndim == 3 else stored
        planes.append(plane.astype(np.float64) * frame.slope + frame.intercept)
    return np.stack(planes).astype(np.float32)


def _pixel_array(frame: _Frame) -> np.ndarray:
    dataset = frame.dataset
    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        array = np.asarray(dataset.pixel_array)
    except Exception as error:
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"{frame.file.name}: cannot decode pixel data ({name}): {_first_line(error)}"
        ) from error
    if array.ndim not in (2, 3):
        raise InputError(f"{frame.file.name}: unsupported pixel array shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{frame.file.name}: pixel data contains NaN or inf")
    return array


def _volume(frames: list[_Frame], pixels: np.ndarray, label: str) -> ImageVolume:
    first = frames[0]
    known = [frame.position for frame in frames if frame.position is not None]
    positions = np.stack(known) if len(known) == len(frames) else None
    affine = None
    if positions is not None and first.orientation is not None and first.pixel_spacing:
        affine = affine_from_planes(
            positions, first.orientation, first.pixel_spacing, first.thickness
        )
    return ImageVolume(
        images=pixels,
        pixel_spacing_mm=first.pixel_spacing,
        slice_thickness_mm=first.thickness,
        affine=affine,
        positions=positions,
        orientation=first.orientation,
        dicom_reference=_reference(frames),
        source=label,
    )


def _reference(frames: list[_Frame]) -> dict[str, Any]:
    """Study, patient and frame-of-reference identifiers plus the source instances, in order."""
    dataset = frames[0].dataset
    reference: dict[str, Any] = {}
    for keyword in REFERENCE_KEYWORDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, int):
            reference[keyword] = int(value)
        elif isinstance(value, float):
            reference[keyword] = float(value)
        else:
            reference[keyword] = str(value)
    reference["SourceInstances"] = [
        {
            "SOPClassUID": str(frame.dataset.get("SOPClassUID", "")),
            "SOPInstanceUID": str(frame.dataset.get("SOPInstanceUID", "")),
            "FrameNumber": None if frame.frame is None else frame.frame + 1,
        }
        for frame in frames
    ]
    return reference


def _floats(value: Any, count: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        numbers = np.array([float(item) for item in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _spacing(value: Any) -> tuple[float, float] | None:
    numbers = _floats(value, 2)
    if numbers is None or (numbers <= 0).any():
        return None
    return (float(numbers[0]), float(numbers[1]))


def _optional_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
