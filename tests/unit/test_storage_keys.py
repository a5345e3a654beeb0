"""Key layout of the raw and results buckets."""

from __future__ import annotations

import re

import pytest

from services.recon.errors import InputError
from services.storage import keys


@pytest.mark.parametrize(
    ("key", "tenant", "study", "name"),
    [
        ("scan.h5", "default", None, "scan.h5"),
        ("acme/scan.h5", "acme", None, "scan.h5"),
        ("acme/study-1/scan.h5", "acme", "study-1", "scan.h5"),
        ("acme/study-1/series/3/img.dcm", "acme", "study-1", "series/3/img.dcm"),
    ],
)
def test_raw_keys_split_into_tenant_study_and_name(
    key: str, tenant: str, study: str | None, name: str
) -> None:
    parsed = keys.parse_raw_key(key)
    assert (parsed.tenant, parsed.study, parsed.name) == (tenant, study, name)
    assert parsed.key == key


@pytest.mark.parametrize(
    "key", ["", "/abs.h5", "dir/", "a//b.h5", "a/../b.h5", "_hidden/x.h5", "a b/x.h5", "x" * 2000]
)
def test_unusable_raw_keys_are_input_errors(key: str) -> None:
    with pytest.raises(InputError):
        keys.parse_raw_key(key)


def test_reserved_and_hidden_raw_keys() -> None:
    assert keys.is_reserved_raw_key(keys.parse_raw_key("acme/_quarantine/q1/object/x.h5"))
    assert keys.is_reserved_raw_key(keys.parse_raw_key("acme/study/.tmp.abc123"))
    assert not keys.is_reserved_raw_key(keys.parse_raw_key("acme/study/x.h5"))
    with pytest.raises(InputError, match="reserved"):
        keys.raw_key("acme", "_quarantine/x.h5")
    assert keys.raw_key("acme", "s/x.h5") == "acme/s/x.h5"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("acme/study-1/scan.h5", True),
        ("acme/scan.h5", True),
        ("scan.h5", True),  # the default tenant
        ("acme/study-1/uploads/scan.h5", True),  # a subfolder of a study is still the study's
        ("acme/uploads-2025/scan.h5", True),  # only the API's folder itself is left alone
        ("uploads/s1/scan.h5", True),  # tenant "uploads", study "s1"
        ("acme/uploads/0123456789abcdef0123/scan.h5", False),  # POST /v1/jobs upload
        ("acme/uploads/s1/large.h5", False),  # presigned PUT from POST /v1/uploads
        ("acme/_quarantine/q1/object/s1/x.h5", False),
        ("acme/_quarantine/q1/reason.json", False),
        ("acme/_staging/j1/a1/x.h5", False),
        ("acme/study/.upload.part", False),
        ("a//b.h5", False),  # unusable keys are never inputs
        ("bad tenant/x.h5", False),
    ],
)
def test_ingest_inputs_leave_out_mrdiff_and_api_folders(key: str, expected: bool) -> None:
    assert keys.is_ingest_input(key) is expected
    if expected:
        assert keys.is_ingest_input(keys.parse_raw_key(key)) is True


def test_results_layout() -> None:
    assert keys.job_record_key("acme", "j1") == "acme/jobs/j1/job.json"
    assert keys.result_key("acme", "j1", "png/slice-003.png") == "acme/jobs/j1/png/slice-003.png"
    assert keys.staging_prefix("acme", "j1", "a7") == "acme/_staging/j1/a7/"
    digest = "0" * 64
    assert keys.processing_index_key("acme", digest) == f"acme/index/{digest}.json"
    assert re.fullmatch(
        r"acme/idempotency/[0-9a-f]{64}\.json",
        keys.idempotency_index_key("acme", "client key / with spaces"),
    )
    assert keys.lock_prefix("acme/jobs/j1/job.json").startswith("acme/_locks/")


@pytest.mark.parametrize("name", ["", "job.json", "../x", "a/../b", "/abs", "a//b", "_x", "x y"])
def test_artefact_names_must_be_safe(name: str) -> None:
    with pytest.raises(InputError):
        keys.validate_artefact_name(name)


@pytest.mark.parametrize("bad", ["", "_x", ".x", "a/b", "x" * 65, "tab\t"])
def test_tenants_and_job_ids_are_single_safe_segments(bad: str) -> None:
    with pytest.raises(InputError, match="tenant"):
        keys.validate_tenant(bad)
    with pytest.raises(InputError, match="job id"):
        keys.validate_job_id(bad)


def test_new_job_ids_are_unique_valid_and_time_ordered() -> None:
    ids = [keys.new_job_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(keys.validate_job_id(job_id) for job_id in ids)
    stamps = [job_id.split("-")[0] for job_id in ids]
    assert stamps == sorted(stamps)
