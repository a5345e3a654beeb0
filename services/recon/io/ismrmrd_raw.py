"""ISMRMRD / MRD raw data (Inati et al., MRM 2017): Cartesian 2-D multi-slice k-space.

The reader fills a (slices, coils, readout, phase) matrix from each imaging acquisition's
``kspace_encode_step_1`` and ``slice`` counters, skips noise, calibration-only, navigator and
other non-imaging acquisitions by their flags, averages repeated lines, and removes readout
oversampling (encoded vs recon field of view along x: inverse FFT along the readout, keep the
centre, FFT back). Nothing else is cropped unless ``crop_to_recon_space=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import numpy as np
from ismrmrd.xsd import (
    CreateFromDocument,
    ToXML,
    acquisitionSystemInformationType,
    encodingLimitsType,
    encodingSpaceType,
    encodingType,
    experimentalConditionsType,
    fieldOfViewMm,
    ismrmrdHeader,
    limitType,
    matrixSizeType,
    trajectoryType,
    userParameterLongType,
    userParametersType,
)

from services.recon.errors import InputError
from services.recon.io.atomic import atomic_output
from services.recon.io.input_files import require_hdf5
from services.recon.io.volumes import KspaceVolume

NON_IMAGING_FLAGS = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)
"""Acquisitions with any of these flags carry no imaging k-space and are skipped.

``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING`` lines are imaging lines and are kept."""

GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478e6
READ_CHUNK = 4096


def _flag_bits(flags: tuple[int, ...]) -> np.uint64:
    return np.uint64(sum(1 << (flag - 1) for flag in flags))


def ifft1c(kspace: np.ndarray, axis: int) -> np.ndarray:
    """Centered orthonormal inverse FFT along one axis (design.md convention)."""
    shifted = np.fft.ifftshift(kspace, axes=axis)
    return np.fft.fftshift(np.fft.ifft(shifted, axis=axis, norm="ortho"), axes=axis)


def fft1c(image: np.ndarray, axis: int) -> np.ndarray:
    """Centered orthonormal FFT along one axis (design.md convention)."""
    shifted = np.fft.ifftshift(image, axes=axis)
    return np.fft.fftshift(np.fft.fft(shifted, axis=axis, norm="ortho"), axes=axis)


def read_ismrmrd(path: str | os.PathLike[str], crop_to_recon_space: bool = False) -> KspaceVolume:
    """Read Cartesian 2-D ISMRMRD raw data as (slices, coils, readout, phase) k-space.

    ``crop_to_recon_space`` also crops the image to the recon-space matrix (the phase direction
    only when every phase-encoding line was acquired).
    """
    file = require_hdf5(path)
    name = file.name
    with h5py.File(file, "r") as h5:
        if not isinstance(h5.get("dataset"), h5py.Group):
            raise InputError(f"{name}: no ISMRMRD `dataset` group")
    with ismrmrd.Dataset(str(file), "dataset", mode="r") as dataset:
        try:
            xml = dataset.read_xml_header()
        except LookupError as error:
            raise InputError(f"{name}: ISMRMRD file without an XML header") from error
    header = _parse_header(xml, name)
    encoding = header.encoding[0]
    if encoding.trajectory != trajectoryType.CARTESIAN:
        raise InputError(
            f"{name}: non-Cartesian trajectory '{encoding.trajectory.value}' is not supported"
        )
    lines = _read_imaging_lines(file, name)
    kspace, mask = _fill_matrix(lines, encoding, name)
    encoded, recon = encoding.encodedSpace, encoding.reconSpace
    oversampling = _readout_oversampling(encoded, recon)
    readout_size = round(encoded.matrixSize.x / oversampling)
    kspace, mask = crop_image_axis(kspace, mask, axis=2, size=readout_size)
    if crop_to_recon_space:
        kspace, mask = _crop_to_recon(kspace, mask, recon.matrixSize, name)
    spacing = None
    if encoded.fieldOfView_mm.x > 0 and encoded.fieldOfView_mm.y > 0:
        spacing = (
            float(encoded.fieldOfView_mm.x) / encoded.matrixSize.x,
            float(encoded.fieldOfView_mm.y) / encoded.matrixSize.y,
        )
    attrs = _header_attrs(header, oversampling, crop_to_recon_space, lines.skipped)
    return KspaceVolume(
        kspace=kspace.astype(np.complex64),
        multicoil=kspace.shape[1] > 1,
        mask=mask,
        attrs=attrs,
        simulated=bool(attrs.get("simulated_kspace", False)),
        pixel_spacing_mm=spacing,
        source=name,
    )


@dataclass
class _ImagingLines:
    """Readout lines of the imaging acquisitions, with their counters."""

    data: list[np.ndarray] = field(default_factory=list)
    step1: list[int] = field(default_factory=list)
    slice: list[int] = field(default_factory=list)
    center: list[int] = field(default_factory=list)
    skipped: int = 0


def _parse_header(xml: Any, name: str) -> Any:
    text = xml.decode("utf-8", errors="replace") if isinstance(xml, bytes) else str(xml)
    try:
        header = CreateFromDocument(text)
    except Exception as error:
        raise InputError(f"{name}: invalid ISMRMRD XML header ({type(error).__name__})") from error
    if not header.encoding:
        raise InputError(f"{name}: ISMRMRD header has no encoding")
    return header


def _read_imaging_lines(file: Path, name: str) -> _ImagingLines:
    skip_bits = _flag_bits(NON_IMAGING_FLAGS)
    reverse_bit = _flag_bits((ismrmrd.ACQ_IS_REVERSE,))
    lines = _ImagingLines()
    with h5py.File(file, "r") as h5:
        table = h5["dataset"].get("data")
        if not isinstance(table, h5py.Dataset) or table.shape[0] == 0:
            raise InputError(f"{name}: ISMRMRD file without acquisitions")
        for start in range(0, table.shape[0], READ_CHUNK):
            rows = table[start : start + READ_CHUNK]
            head = rows["head"]
            for offset, (row, acq) in enumerate(zip(rows, head, strict=True)):
                if acq["flags"] & skip_bits or acq["encoding_space_ref"] != 0:
                    lines.skipped += 1
                    continue
                if acq["flags"] & reverse_bit:
                    raise InputError(f"{name}: reversed (bipolar/EPI) readouts are not supported")
                _check_counters(acq["idx"], name)
                channels, samples = int(acq["active_channels"]), int(acq["number_of_samples"])
                values = np.asarray(row["data"], dtype=np.float32).view(np.complex64)
                if not np.isfinite(values).all():
                    raise InputError(f"{name}: acquisition {start + offset} contains NaN or inf")
                if values.size != channels * samples:
                    number = start + offset
                    raise InputError(
                        f"{name}: acquisition {number} data size does not match header"
                    )
                first, last = int(acq["discard_pre"]), samples - int(acq["discard_post"])
                lines.data.append(values.reshape(channels, samples)[:, first:last])
                lines.center.append(int(acq["center_sample"]) - first)
                lines.step1.append(int(acq["idx"]["kspace_encode_step_1"]))
                lines.slice.append(int(acq["idx"]["slice"]))
    if not lines.data:
        raise InputError(f"{name}: no imaging acquisitions (only noise/calibration data)")
    coil_counts = {line.shape[0] for line in lines.data}
    if len(coil_counts) != 1:
        raise InputError(f"{name}: acquisitions have different coil counts {sorted(coil_counts)}")
    return lines


def _check_counters(idx: np.void, name: str) -> None:
    if idx["kspace_encode_step_2"] != 0:
        raise InputError(f"{name}: 3-D encoding (kspace_encode_step_2) is not supported")
    for counter in ("contrast", "phase", "repetition", "set"):
        if idx[counter] != 0:
            raise InputError(
                f"{name}: several {counter}s in one file are not supported; export one {counter}"
            )


def _fill_matrix(lines: _ImagingLines, encoding: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Place each line at its (slice, phase row, readout offset); average repeated lines."""
    matrix = encoding.encodedSpace.matrixSize
    if (matrix.z or 1) > 1:
        raise InputError(f"{name}: 3-D encoded space (matrix z = {matrix.z}) is not supported")
    readout, phase = int(matrix.x), int(matrix.y)
    limits = encoding.encodingLimits
    step1_limit = limits.kspace_encoding_step_1 if limits is not None else None
    phase_center = phase // 2
    if step1_limit is not None and (step1_limit.center > 0 or step1_limit.maximum == 0):
        phase_center = step1_limit.center  # a centre of 0 with more lines means "not set"
    slice_limit = limits.slice if limits is not None else None
    slices = max(max(lines.slice) + 1, (slice_limit.maximum + 1) if slice_limit else 1)
    coils = lines.data[0].shape[0]
    kspace = np.zeros((slices, coils, readout, phase), dtype=np.complex128)
    counts = np.zeros((slices, readout, phase), dtype=np.int32)
    for data, step1, slice_index, center in zip(
        lines.data, lines.step1, lines.slice, lines.center, strict=True
    ):
        row = step1 - phase_center + phase // 2
        first = readout // 2 - center
        if not 0 <= row < phase:
            raise InputError(f"{name}: phase-encoding step {step1} is outside the encoded matrix")
        if first < 0 or first + data.shape[1] > readout:
            raise InputError(
                f"{name}: readout of {data.shape[1]} samples (centre {center}) does not fit the "
                f"encoded matrix x = {readout}"
            )
        kspace[slice_index, :, first : first + data.shape[1], row] += data
        counts[slice_index, first : first + data.shape[1], row] += 1
    mask = counts > 0
    kspace /= np.maximum(counts, 1)[:, None]
    return kspace.astype(np.complex64), mask


def _readout_oversampling(encoded: Any, recon: Any) -> float:
    """Encoded over recon field of view along x (matrix ratio when the FOV is missing)."""
    if encoded.fieldOfView_mm.x > 0 and recon.fieldOfView_mm.x > 0:
        ratio = float(encoded.fieldOfView_mm.x) / float(recon.fieldOfView_mm.x)
    else:
        ratio = encoded.matrixSize.x / max(recon.matrixSize.x, 1)
    return max(ratio, 1.0)


def crop_image_axis(
    kspace: np.ndarray, mask: np.ndarray, axis: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the central ``size`` image pixels along ``axis`` of (S, C, H, W) k-space.

    Inverse FFT along the axis, crop the centre, FFT back; the (S, H, W) mask is resampled to
    the coarser k-space grid and k-space outside it is zeroed.
    """
    full = kspace.shape[axis]
    if size >= full:
        return kspace, mask
    start = full // 2 - size // 2
    image = ifft1c(kspace, axis=axis)
    cropped = np.take(image, np.arange(start, start + size), axis=axis)
    new_kspace = fft1c(cropped, axis=axis)
    mask_axis = axis - 1
    old_index = np.rint((np.arange(size) - size // 2) * (full / size)).astype(int) + full // 2
    new_mask = np.take(mask, np.clip(old_index, 0, full - 1), axis=mask_axis)
    new_kspace = np.where(np.expand_dims(new_mask, 1), new_kspace, 0)
    return new_kspace.astype(np.complex64), new_mask


def _crop_to_recon(
    kspace: np.ndarray, mask: np.ndarray, recon_matrix: Any, name: str
) -> tuple[np.ndarray, np.ndarray]:
    kspace, mask = crop_image_axis(kspace, mask, axis=2, size=int(recon_matrix.x))
    if int(recon_matrix.y) < kspace.shape[3]:
        if not mask.any(axis=1).all():
            raise InputError(
                f"{name}: cannot crop the phase-encoding direction of undersampled data "
                "to the recon space; read without crop_to_recon_space"
            )
        kspace, mask = crop_image_axis(kspace, mask, axis=3, size=int(recon_matrix.y))
    return kspace, mask


def _header_attrs(header: Any, oversampling: float, cropped: bool, skipped: int) -> dict[str, Any]:
    """Non-identifying acquisition facts from the XML header."""
    encoding = header.encoding[0]
    encoded, recon = encoding.encodedSpace, encoding.reconSpace
    attrs: dict[str, Any] = {
        "source_format": "ismrmrd",
        "trajectory": encoding.trajectory.value,
        "encoded_matrix": [encoded.matrixSize.x, encoded.matrixSize.y, encoded.matrixSize.z],
        "recon_matrix": [recon.matrixSize.x, recon.matrixSize.y, recon.matrixSize.z],
        "encoded_fov_mm": [
            encoded.fieldOfView_mm.x,
            encoded.fieldOfView_mm.y,
            encoded.fieldOfView_mm.z,
        ],
        "recon_fov_mm": [recon.fieldOfView_mm.x, recon.fieldOfView_mm.y, recon.fieldOfView_mm.z],
        "readout_oversampling_removed": oversampling,
        "cropped_to_recon_space": cropped,
        "non_imaging_acquisitions_skipped": skipped,
    }
    system = header.acquisitionSystemInformation
    if system is not None and system.systemFieldStrength_T is not None:
        attrs["field_strength_t"] = float(system.systemFieldStrength_T)
    sequence = header.sequenceParameters
    if sequence is not None:
        for key, values in (("tr_ms", sequence.TR), ("te_ms", sequence.TE)):
            if values:
                attrs[key] = [float(value) for value in values]
    parameters = header.userParameters
    if parameters is not None:
        for item in parameters.userParameterLong:
            if item.name == "simulated_kspace":
                attrs["simulated_kspace"] = bool(item.value)
    return attrs


def write_ismrmrd(
    path: str | os.PathLike[str],
    kspace: np.ndarray,
    mask: np.ndarray | None = None,
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0),
    slice_thickness_mm: float = 5.0,
    readout_oversampling: int = 2,
    simulated: bool = False,
    field_strength_t: float = 1.5,
    overwrite: bool = False,
) -> Path:
    """Write (slices, coils, readout, phase) k-space as Cartesian ISMRMRD raw data.

    The readout is stored ``readout_oversampling`` times oversampled (the image zero-padded in
    x), as scanners do, so that :func:`read_ismrmrd` has oversampling to remove. Only the phase
    lines in ``mask`` are written (the mask must be constant along the readout); without a
    mask, lines that are zero in every coil and readout sample are left out.
    """
    data = np.asarray(kspace)
    if data.ndim != 4 or not np.iscomplexobj(data) or data.size == 0:
        raise InputError(f"kspace must be complex (slices, coils, H, W); got {data.shape}")
    if not np.isfinite(data).all():
        raise InputError("kspace contains NaN or inf")
    slices, coils, readout, phase = data.shape
    acquired = _acquired_lines(data, mask)
    if readout_oversampling < 1:
        raise InputError(f"readout_oversampling must be >= 1; got {readout_oversampling}")
    oversampled = readout * readout_oversampling
    image = ifft1c(data, axis=2)
    padded = np.zeros((slices, coils, oversampled, phase), dtype=np.complex128)
    start = oversampled // 2 - readout // 2
    padded[:, :, start : start + readout] = image
    raw = fft1c(padded, axis=2).astype(np.complex64)
    header = _build_header(
        (slices, coils, readout, phase),
        readout_oversampling,
        pixel_spacing_mm,
        slice_thickness_mm,
        simulated,
        field_strength_t,
    )
    target = Path(path)
    with (
        atomic_output(target, overwrite) as temp,
        ismrmrd.Dataset(str(temp), "dataset", mode="w") as dataset,
    ):
        dataset.write_xml_header(ToXML(header))
        counter = 0
        for slice_index in range(slices):
            rows = np.flatnonzero(acquired[slice_index])
            for position, row in enumerate(rows):
                acquisition = ismrmrd.Acquisition.from_array(
                    np.ascontiguousarray(raw[slice_index, :, :, row])
                )
                _fill_acquisition_header(
                    acquisition,
                    counter,
                    slice_index,
                    int(row),
                    slices,
                    slice_thickness_mm,
                    oversampled,
                    first=position == 0,
                    last=position == rows.size - 1,
                )
                dataset.append_acquisition(acquisition)
                counter += 1
    return target


def _acquired_lines(data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(slices, phase) bool: which phase-encoding lines to write."""
    slices, _, readout, phase = data.shape
    if mask is None:
        return np.any(data != 0, axis=(1, 2))
    sampled = np.asarray(mask, dtype=bool)
    if sampled.ndim == 1:
        sampled = sampled[None, None, :]
    elif sampled.ndim == 2:
        sampled = sampled[None]
    try:
        sampled = np.broadcast_to(sampled, (slices, readout, phase))
    except ValueError as error:
        message = f"mask shape {np.shape(mask)} does not fit k-space {data.shape}"
        raise InputError(message) from error
    if not (sampled == sampled[:, :1]).all():
        raise InputError("ISMRMRD Cartesian lines need a mask that is constant along the readout")
    lines = sampled[:, 0, :]
    if not lines.any(axis=1).all():
        raise InputError("mask selects no phase-encoding line in some slice")
    return lines


def _build_header(
    shape: tuple[int, int, int, int],
    oversampling: int,
    spacing: tuple[float, float],
    thickness: float,
    simulated: bool,
    field_strength_t: float,
) -> Any:
    slices, coils, readout, phase = shape
    row_mm, column_mm = (float(value) for value in spacing)

    def space(readout_size: int) -> Any:
        return encodingSpaceType(
            matrixSize=matrixSizeType(x=readout_size, y=phase, z=1),
            fieldOfView_mm=fieldOfViewMm(
                x=readout_size * row_mm, y=phase * column_mm, z=float(thickness)
            ),
        )

    encoding = encodingType(
        encodedSpace=space(readout * oversampling),
        reconSpace=space(readout),
        encodingLimits=encodingLimitsType(
            kspace_encoding_step_1=limitType(minimum=0, maximum=phase - 1, center=phase // 2),
            kspace_encoding_step_2=limitType(minimum=0, maximum=0, center=0),
            slice=limitType(minimum=0, maximum=slices - 1, center=0),
        ),
        trajectory=trajectoryType.CARTESIAN,
    )
    return ismrmrdHeader(
        experimentalConditions=experimentalConditionsType(
            H1resonanceFrequency_Hz=round(GYROMAGNETIC_RATIO_HZ_PER_T * field_strength_t)
        ),
        acquisitionSystemInformation=acquisitionSystemInformationType(
            receiverChannels=coils, systemFieldStrength_T=field_strength_t
        ),
        encoding=[encoding],
        userParameters=userParametersType(
            userParameterLong=[userParameterLongType(name="simulated_kspace", value=int(simulated))]
        ),
    )


def _fill_acquisition_header(
    acquisition: Any,
    counter: int,
    slice_index: int,
    row: int,
    slices: int,
    thickness: float,
    samples: int,
    first: bool,
    last: bool,
) -> None:
    acquisition.version = 1
    acquisition.scan_counter = counter
    acquisition.center_sample = samples // 2
    acquisition.sample_time_us = 5.0
    acquisition.idx.kspace_encode_step_1 = row
    acquisition.idx.slice = slice_index
    acquisition.read_dir[:] = (1.0, 0.0, 0.0)
    acquisition.phase_dir[:] = (0.0, 1.0, 0.0)
    acquisition.slice_dir[:] = (0.0, 0.0, 1.0)
    acquisition.position[:] = (0.0, 0.0, (slice_index - (slices - 1) / 2) * thickness)
    for channel in range(acquisition.active_channels):
        acquisition.setChannelActive(channel)
    if first:
        acquisition.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
    if last:
        acquisition.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        if slice_index == slices - 1:
            acquisition.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
