"""Write (S, H, W) float images as a DICOM series (MR Image or Secondary Capture Storage).

Pixels are stored as uint16 with RescaleSlope/RescaleIntercept carrying the float scale, one
scale for the whole series. Every file says "RESEARCH USE ONLY - NOT FOR DIAGNOSIS" in
SeriesDescription and ImageComments. With a ``reference`` (from
:attr:`ImageVolume.dicom_reference`) the series joins the input's study and frame of reference
as a DERIVED series (pass ``reference={}`` for results of non-DICOM inputs: DERIVED, patient
left empty); without one it belongs to a synthetic phantom patient (demo data only).
UIDs come from :func:`pydicom.uid.generate_uid`, reproducible when ``seed_for_uids`` is given.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from services.recon.errors import InputError
from services.recon.io.geometry import (
    AXIAL_ORIENTATION,
    PlaneGeometry,
    centred_planes,
    slice_normal,
)
from services.recon.io.notice import RESEARCH_USE_ONLY_DICOM

SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
PHANTOM_PATIENT = {"PatientName": "Phantom^Synthetic", "PatientID": "MRDIFF-PHANTOM"}
"""The synthetic patient of demo data: no real person."""
UINT16_MAX = 65535
LONG_STRING_MAX = 64


def write_dicom_series(
    directory: str | os.PathLike[str],
    images: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    reference: Mapping[str, Any] | None = None,
    series_description: str = "mrdiff",
    seed_for_uids: int | None = None,
    positions: np.ndarray | None = None,
    orientation: np.ndarray | None = None,
    series_number: int | None = None,
    sop_class: Literal["mr", "secondary_capture"] = "mr",
    transfer_syntax: str = ExplicitVRLittleEndian,
    window: tuple[float, float] | None = None,
    filename_prefix: str = "IM",
    overwrite: bool = False,
) -> list[Path]:
    """Write one file per slice into ``directory``; returns the paths in slice order.

    ``positions`` (S, 3) / ``orientation`` (6,) default to axial slices centred on the origin
    spaced by the slice thickness. Files are written to a temp folder and moved into place at
    the end, so a failure leaves no partial file.
    """
    volume = _checked_images(images)
    slices, rows, columns = volume.shape
    geometry = _geometry(volume.shape, pixel_spacing_mm, slice_thickness_mm, positions, orientation)
    syntax = UID(transfer_syntax)
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise InputError(f"transfer syntax {transfer_syntax} is not supported for writing")
    folder = Path(directory)
    targets = [folder / f"{filename_prefix}{index + 1:04d}.dcm" for index in range(slices)]
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: output already exists; pass overwrite=True (--overwrite)")
    stored, slope, intercept = _to_uint16(volume)
    center, width = _window(volume, window)
    uids = _UidFactory(seed_for_uids, series_description, reference)
    series = _series_attributes(
        reference,
        uids,
        series_description,
        series_number,
        sop_class,
        geometry,
        float(slice_thickness_mm),
        (slope, intercept),
        (center, width),
    )
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{filename_prefix}.tmp-", dir=folder))
    try:
        staged = []
        for index in range(slices):
            dataset = _instance(
                series, uids, index, geometry, stored[index], (rows, columns), reference
            )
            if syntax != ExplicitVRLittleEndian:
                dataset.compress(syntax)
            path = staging / targets[index].name
            dataset.save_as(path, enforce_file_format=True)
            staged.append(path)
        for path, target in zip(staged, targets, strict=True):
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


class _UidFactory:
    """Fresh UIDs, or reproducible ones derived from (seed, description, reference, role)."""

    def __init__(self, seed: int | None, description: str, reference: Mapping[str, Any] | None):
        self.seed = seed
        self.context = [
            description,
            str((reference or {}).get("SeriesInstanceUID", "")),
            str((reference or {}).get("StudyInstanceUID", "")),
        ]

    def __call__(self, role: str) -> UID:
        if self.seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[f"mrdiff-seed-{self.seed}", *self.context, role])


def _checked_images(images: np.ndarray) -> np.ndarray:
    volume = np.asarray(images)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or volume.size == 0:
        raise InputError(f"images must be (slices, H, W); got shape {volume.shape}")
    if np.iscomplexobj(volume) or volume.dtype.kind not in "biuf":
        raise InputError(f"images must be real-valued; got dtype {volume.dtype}")
    volume = volume.astype(np.float64)
    if not np.isfinite(volume).all():
        raise InputError("images contain NaN or inf")
    return volume


def _geometry(
    shape: tuple[int, ...],
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    positions: np.ndarray | None,
    orientation: np.ndarray | None,
) -> PlaneGeometry:
    slices, rows, columns = shape
    spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    if min(spacing) <= 0 or not slice_thickness_mm > 0:
        raise InputError(f"pixel spacing {spacing} and slice thickness must be positive")
    plane_orientation = AXIAL_ORIENTATION if orientation is None else np.asarray(orientation, float)
    if plane_orientation.shape != (6,) or not np.isfinite(plane_orientation).all():
        raise InputError(f"orientation must be 6 finite values; got {plane_orientation.shape}")
    if positions is None:
        return centred_planes(
            (slices, rows, columns), spacing, float(slice_thickness_mm), plane_orientation
        )
    plane_positions = np.asarray(positions, dtype=float)
    if plane_positions.shape != (slices, 3) or not np.isfinite(plane_positions).all():
        raise InputError(
            f"positions must be ({slices}, 3) finite values; got {plane_positions.shape}"
        )
    return PlaneGeometry(plane_positions, plane_orientation, spacing, float(slice_thickness_mm))


def _to_uint16(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 pixels and the (slope, intercept) that map them back to the float values."""
    low, high = float(volume.min()), float(volume.max())
    slope = float(DSfloat((high - low) / UINT16_MAX, auto_format=True)) if high > low else 1.0
    intercept = float(DSfloat(low, auto_format=True))
    stored = np.rint((volume - intercept) / slope)
    return np.clip(stored, 0, UINT16_MAX).astype(np.uint16), slope, intercept


def _window(volume: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    """(centre, width) of the display window: given, or the 0.5-99.5 percentile range."""
    low, high = window if window is not None else np.percentile(volume, [0.5, 99.5])
    width = float(high - low) if high > low else 1.0
    return float(low + high) / 2, width


def _described(description: str) -> str:
    """SeriesDescription (LO, 64 characters) that always ends with the research-use notice."""
    room = LONG_STRING_MAX - len(RESEARCH_USE_ONLY_DICOM) - 1
    return f"{description[:room]} {RESEARCH_USE_ONLY_DICOM}".strip()


def _series_attributes(
    reference: Mapping[str, Any] | None,
    uids: _UidFactory,
    description: str,
    series_number: int | None,
    sop_class: str,
    geometry: PlaneGeometry,
    thickness: float,
    rescale: tuple[float, float],
    window: tuple[float, float],
) -> Dataset:
    """Attributes shared by every instance of the series."""
    derived = reference is not None
    ref = dict(reference or {})
    now = datetime.datetime.now()
    series = Dataset()
    series.SpecificCharacterSet = "ISO_IR 192"
    series.SOPClassUID = MRImageStorage if sop_class == "mr" else SecondaryCaptureImageStorage
    patient = ref if derived else PHANTOM_PATIENT
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge"):
        setattr(series, keyword, patient.get(keyword, ""))
    series.StudyInstanceUID = ref.get("StudyInstanceUID") or uids("study")
    series.FrameOfReferenceUID = ref.get("FrameOfReferenceUID") or uids("frame-of-reference")
    series.SeriesInstanceUID = uids("series")
    series.StudyDate = ref.get("StudyDate", now.strftime("%Y%m%d"))
    series.StudyTime = ref.get("StudyTime", now.strftime("%H%M%S"))
    for keyword in ("StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
        setattr(series, keyword, ref.get(keyword, ""))
    series.SeriesDate = now.strftime("%Y%m%d")
    series.SeriesTime = now.strftime("%H%M%S")
    series.ContentDate = series.SeriesDate
    series.ContentTime = series.SeriesTime
    series.Modality = "MR"
    series.Manufacturer = "mrdiff"
    series.ManufacturerModelName = "mrdiff research reconstruction"
    series.InstitutionName = ""
    series.SeriesNumber = _series_number(series_number, ref.get("SeriesNumber"), derived)
    series.SeriesDescription = _described(description)
    series.ImageComments = RESEARCH_USE_ONLY_DICOM
    series.ImageType = ["DERIVED", "SECONDARY"] if derived else ["ORIGINAL", "PRIMARY", "OTHER"]
    if derived:
        series.DerivationDescription = f"{description[:900]}; {RESEARCH_USE_ONLY_DICOM}"
    if "BodyPartExamined" in ref:
        series.BodyPartExamined = ref["BodyPartExamined"]
    series.PatientPosition = ref.get("PatientPosition", "HFS")
    series.PositionReferenceIndicator = ""
    series.ImageOrientationPatient = [float(value) for value in geometry.orientation]
    series.PixelSpacing = list(geometry.pixel_spacing_mm)
    series.SliceThickness = thickness
    if len(geometry.positions) > 1:
        step = float(np.linalg.norm(geometry.positions[1] - geometry.positions[0]))
        series.SpacingBetweenSlices = float(DSfloat(step, auto_format=True))
    if sop_class == "mr":
        series.ScanningSequence = "RM"
        series.SequenceVariant = "NONE"
        series.ScanOptions = ""
        series.MRAcquisitionType = "2D"
        series.RepetitionTime = ""
        series.EchoTime = ""
        series.EchoTrainLength = ""
        if "MagneticFieldStrength" in ref:
            series.MagneticFieldStrength = ref["MagneticFieldStrength"]
    else:
        series.ConversionType = "WSD"
    series.SamplesPerPixel = 1
    series.PhotometricInterpretation = "MONOCHROME2"
    series.BitsAllocated = 16
    series.BitsStored = 16
    series.HighBit = 15
    series.PixelRepresentation = 0
    series.RescaleSlope = DSfloat(rescale[0], auto_format=True)
    series.RescaleIntercept = DSfloat(rescale[1], auto_format=True)
    series.RescaleType = "US"
    series.WindowCenter = DSfloat(window[0], auto_format=True)
    series.WindowWidth = DSfloat(window[1], auto_format=True)
    series.BurnedInAnnotation = "NO"
    return series


def _series_number(requested: int | None, source: Any, derived: bool) -> int:
    """The requested number; else the source series number + 1000 for derived series; else 1."""
    if requested is not None:
        return int(requested)
    if not derived:
        return 1
    try:
        return int(source) + 1000
    except (TypeError, ValueError):
        return 1000


def _instance(
    series: Dataset,
    uids: _UidFactory,
    index: int,
    geometry: PlaneGeometry,
    pixels: np.ndarray,
    shape: tuple[int, int],
    reference: Mapping[str, Any] | None,
) -> Dataset:
    dataset = copy.deepcopy(series)
    sop_instance = uids(f"instance-{index}")
    dataset.SOPInstanceUID = sop_instance
    dataset.InstanceNumber = index + 1
    position = geometry.positions[index]
    dataset.ImagePositionPatient = [float(DSfloat(value, auto_format=True)) for value in position]
    dataset.SliceLocation = float(
        DSfloat(np.dot(slice_normal(geometry.orientation), position), auto_format=True)
    )
    dataset.Rows, dataset.Columns = shape
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    sources = _source_instances(reference, index, geometry.positions.shape[0])
    if sources is not None:
        dataset.SourceImageSequence = sources
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = series.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MRDIFF_0_1"
    dataset.file_meta = meta
    dataset.preamble = b"\0" * 128
    return dataset


def _source_instances(
    reference: Mapping[str, Any] | None, index: int, slices: int
) -> DicomSequence | None:
    """SourceImageSequence item for slice ``index`` when the reference lists one per slice."""
    instances: Sequence[Mapping[str, Any]] = (reference or {}).get("SourceInstances") or []
    if len(instances) != slices:
        return None
    source = instances[index]
    if not source.get("SOPInstanceUID") or not source.get("SOPClassUID"):
        return None
    item = Dataset()
    item.ReferencedSOPClassUID = source["SOPClassUID"]
    item.ReferencedSOPInstanceUID = source["SOPInstanceUID"]
    if source.get("FrameNumber"):
        item.ReferencedFrameNumber = int(source["FrameNumber"])
    return DicomSequence([item])
