"""What arrived in the raw bucket: objects grouped into units of work, before any download.

A *study folder* is ``<tenant>/<study>/`` (or the tenant's top level for two-segment keys and
the ``default`` tenant for bare keys). Inside it:

- every HDF5 file (``.h5``, ``.hdf5``, ``.mrd``: fastMRI or ISMRMRD, told apart on reading) and
  every NIfTI file (``.nii``, ``.nii.gz``) is one unit;
- all DICOM candidates (``.dcm``, ``.ima``, ``.dicom`` or no extension) form one unit that is
  later split by SeriesInstanceUID, one job per series;
- ``job.json`` holds the options for every unit of its folder;
- anything else is unsupported and goes to quarantine with that reason.

A folder is *settled* once nothing in it changed for the quiet period, so a DICOM series
arriving instance by instance (or a ``job.json`` uploaded just after its data) is complete
before any job starts.

Only keys :func:`services.storage.keys.is_ingest_input` accepts are grouped: mrdiff's own
folders (quarantine, ...) and ``<tenant>/uploads/``, where the HTTP API keeps the files it
submitted itself with their own options, are left alone (ingest would make duplicate jobs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from services.storage.inbox import RawObject
from services.storage.keys import is_ingest_input

OPTIONS_FILE = "job.json"
HDF5_SUFFIXES = (".h5", ".hdf5", ".mrd")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


class InputKind(StrEnum):
    """What a raw object looks like from its name."""

    HDF5 = "hdf5"
    NIFTI = "nifti"
    DICOM = "dicom"
    OPTIONS = "options"
    UNSUPPORTED = "unsupported"


def kind_of(name: str) -> InputKind:
    """Classify a raw object by its file name (content is checked later, on reading)."""
    base = name.rsplit("/", 1)[-1]
    lowered = base.lower()
    if base == OPTIONS_FILE:
        return InputKind.OPTIONS
    if lowered.endswith(HDF5_SUFFIXES):
        return InputKind.HDF5
    if lowered.endswith(NIFTI_SUFFIXES):
        return InputKind.NIFTI
    if lowered.endswith(DICOM_SUFFIXES) or "." not in base:
        return InputKind.DICOM
    return InputKind.UNSUPPORTED


@dataclass(frozen=True)
class StudyUnit:
    """Raw objects that become one job (a DICOM unit may still split into several series)."""

    tenant: str
    folder: str
    kind: InputKind
    keys: tuple[str, ...]
    options_key: str | None

    @property
    def label(self) -> str:
        """A short human name for tables: the folder and the file (or series folder)."""
        if self.kind is InputKind.DICOM:
            return f"{self.folder} (DICOM, {len(self.keys)} files)"
        return self.keys[0]


@dataclass(frozen=True)
class Inbox:
    """The inbox grouped: settled units, units still receiving data, unsupported objects."""

    ready: tuple[StudyUnit, ...]
    waiting: tuple[StudyUnit, ...]
    unsupported: tuple[RawObject, ...]


def folder_of(item: RawObject) -> str:
    """The study folder of a raw object (``<tenant>/<study>`` or ``<tenant>``)."""
    return item.tenant if item.study is None else f"{item.tenant}/{item.study}"


def group_inbox(objects: Iterable[RawObject], now: datetime, quiet: timedelta) -> Inbox:
    """Group raw objects into units; a folder is settled when quiet for ``quiet``."""
    by_folder: dict[str, list[RawObject]] = defaultdict(list)
    for item in objects:
        if is_ingest_input(item.key):
            by_folder[folder_of(item)].append(item)
    ready: list[StudyUnit] = []
    waiting: list[StudyUnit] = []
    unsupported: list[RawObject] = []
    for folder in sorted(by_folder):
        items = sorted(by_folder[folder], key=lambda item: item.key)
        units, rejected = _units_of_folder(folder, items)
        unsupported.extend(rejected)
        newest = max(item.last_modified for item in items)
        settled = now - newest >= quiet
        (ready if settled else waiting).extend(units)
    return Inbox(tuple(ready), tuple(waiting), tuple(unsupported))


def _units_of_folder(
    folder: str, items: Sequence[RawObject]
) -> tuple[list[StudyUnit], list[RawObject]]:
    tenant = items[0].tenant
    options_key = next(
        (item.key for item in items if kind_of(item.name) is InputKind.OPTIONS), None
    )
    units: list[StudyUnit] = []
    dicom: list[str] = []
    rejected: list[RawObject] = []
    for item in items:
        kind = kind_of(item.name)
        if kind in (InputKind.HDF5, InputKind.NIFTI):
            units.append(StudyUnit(tenant, folder, kind, (item.key,), options_key))
        elif kind is InputKind.DICOM:
            dicom.append(item.key)
        elif kind is InputKind.UNSUPPORTED:
            rejected.append(item)
    if dicom:
        units.append(StudyUnit(tenant, folder, InputKind.DICOM, tuple(dicom), options_key))
    return units, rejected
