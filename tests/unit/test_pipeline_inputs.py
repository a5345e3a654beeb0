"""Grouping what arrived in the raw bucket into units of work (no download)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipelines.inputs import InputKind, group_inbox, kind_of
from services.storage.inbox import RawObject
from services.storage.keys import parse_raw_key

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def raw(key: str, age_seconds: float = 60.0) -> RawObject:
    parsed = parse_raw_key(key)
    return RawObject(
        key,
        parsed.tenant,
        parsed.study,
        parsed.name,
        10,
        "etag-" + key,
        NOW - timedelta(seconds=age_seconds),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("scan.h5", InputKind.HDF5),
        ("raw.MRD", InputKind.HDF5),
        ("x.hdf5", InputKind.HDF5),
        ("t1.nii.gz", InputKind.NIFTI),
        ("t1.nii", InputKind.NIFTI),
        ("IM0001.dcm", InputKind.DICOM),
        ("series/IM0001", InputKind.DICOM),
        ("a.IMA", InputKind.DICOM),
        ("job.json", InputKind.OPTIONS),
        ("notes.txt", InputKind.UNSUPPORTED),
        ("other.json", InputKind.UNSUPPORTED),
    ],
)
def test_kind_from_name(name: str, kind: InputKind) -> None:
    assert kind_of(name) is kind


def test_units_per_folder_with_options_and_quiet_period() -> None:
    objects = [
        raw("acme/s1/knee.h5"),
        raw("acme/s1/job.json"),
        raw("acme/s2/IM1.dcm"),
        raw("acme/s2/IM2.dcm"),
        raw("acme/s2/sub/IM3"),
        raw("acme/s3/IM1.dcm", age_seconds=2.0),  # still arriving
        raw("acme/s4/readme.txt"),
        raw("bare.h5"),
        raw("acme/uploads/0123456789abcdef0123/scan.h5"),  # the API's own, already submitted
        raw("acme/uploads/s7/large.h5"),  # a presigned upload, submitted through POST /v1/jobs
        raw("acme/_quarantine/q1/object/s4/readme.txt"),  # mrdiff's own
    ]
    inbox = group_inbox(objects, NOW, timedelta(seconds=10))

    ready = {unit.folder: unit for unit in inbox.ready}
    assert set(ready) == {"acme/s1", "acme/s2", "default"}
    assert ready["acme/s1"].kind is InputKind.HDF5
    assert ready["acme/s1"].options_key == "acme/s1/job.json"
    assert ready["acme/s2"].kind is InputKind.DICOM
    assert ready["acme/s2"].keys == ("acme/s2/IM1.dcm", "acme/s2/IM2.dcm", "acme/s2/sub/IM3")
    assert ready["acme/s2"].options_key is None
    assert ready["default"].keys == ("bare.h5",)
    assert [unit.folder for unit in inbox.waiting] == ["acme/s3"]
    assert [item.key for item in inbox.unsupported] == ["acme/s4/readme.txt"]


def test_a_late_job_json_keeps_its_folder_waiting() -> None:
    objects = [raw("acme/s1/knee.h5", 300), raw("acme/s1/job.json", 1)]
    inbox = group_inbox(objects, NOW, timedelta(seconds=10))
    assert inbox.ready == () and len(inbox.waiting) == 1


def test_every_hdf5_file_is_its_own_unit() -> None:
    objects = [raw("acme/s1/a.h5"), raw("acme/s1/b.h5")]
    units = group_inbox(objects, NOW, timedelta(0)).ready
    assert [unit.keys for unit in units] == [("acme/s1/a.h5",), ("acme/s1/b.h5",)]
