"""Reading a job's downloaded inputs and deciding what to compute on them.

k-space (fastMRI HDF5, ISMRMRD) is reconstructed, with an extra retrospective mask on top of
its own when the options name one; images (DICOM series, NIfTI, a reconstruction HDF5) are
reconstructed from simulated, retrospectively undersampled k-space when ``reconstruct`` is set
(labelled ``simulated_kspace``), and get anomaly maps when ``anomaly`` is set. Reconstructions
of k-space get their anomaly maps computed on the reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import h5py

from pipelines.options import JobOptions
from services.recon.engine import retrospective_kspace, undersample
from services.recon.errors import InputError
from services.recon.io import ImageVolume, KspaceVolume, read_dicom_series, read_input


class StudyKind(StrEnum):
    """The detected format of a job's input."""

    FASTMRI = "fastmri-hdf5"
    ISMRMRD = "ismrmrd"
    RECONSTRUCTION = "reconstruction-hdf5"
    DICOM = "dicom-series"
    NIFTI = "nifti"


@dataclass(frozen=True)
class Study:
    """A loaded input and the work planned on it."""

    kind: StudyKind
    kspace: KspaceVolume | None
    """What to reconstruct (measured, masked further, or simulated from images); None: skip."""
    images: ImageVolume | None
    """The input images when the input was images (anomaly maps are computed on them)."""
    anomaly: bool

    @property
    def slices(self) -> int:
        if self.kspace is not None:
            return int(self.kspace.kspace.shape[0])
        assert self.images is not None
        return int(self.images.images.shape[0])

    @property
    def work_items(self) -> int:
        """Slices times passes (reconstruction, anomaly), for progress totals."""
        passes = int(self.kspace is not None) + int(self.anomaly)
        return self.slices * max(1, passes)


def detect_kind(paths: Sequence[Path]) -> StudyKind:
    """The input format, by content (HDF5 layout) and name; :class:`InputError` if unknown."""
    if not paths:
        raise InputError("the job has no input files")
    if len(paths) > 1:
        return StudyKind.DICOM
    path = paths[0]
    if path.exists() and path.stat().st_size > 0 and h5py.is_hdf5(path):
        with h5py.File(path, "r") as h5:
            if "kspace" in h5:
                return StudyKind.FASTMRI
            if isinstance(h5.get("dataset"), h5py.Group):
                return StudyKind.ISMRMRD
            if "reconstruction" in h5:
                return StudyKind.RECONSTRUCTION
        raise InputError(
            f"{path.name}: HDF5 file without `kspace`, an ISMRMRD `dataset` group or "
            "`reconstruction`"
        )
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return StudyKind.NIFTI
    return StudyKind.DICOM


def read_study_input(paths: Sequence[Path]) -> KspaceVolume | ImageVolume:
    """Read one file (any supported format) or several files of one DICOM series."""
    if len(paths) == 1:
        return read_input(paths[0])
    return read_dicom_series(list(paths))


def plan_study(kind: StudyKind, data: KspaceVolume | ImageVolume, options: JobOptions) -> Study:
    """Decide what to compute for ``data`` with ``options`` (simulating k-space for images)."""
    if isinstance(data, KspaceVolume):
        kspace = undersample(data, options.retrospective_options()) if options.mask else data
        return Study(kind, kspace, None, options.anomaly)
    if data.images.ndim != 3 or data.images.shape[0] < 1:
        raise InputError(f"{data.source}: expected images (slices, H, W), got {data.images.shape}")
    simulated = (
        retrospective_kspace(data, options.retrospective_options()) if options.reconstruct else None
    )
    return Study(kind, simulated, data, options.anomaly)
