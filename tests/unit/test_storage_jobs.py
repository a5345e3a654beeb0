"""Job records: JSON form and the state machine (no object store involved)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.storage import InvalidTransitionError, JobRecord, JobState, StorageError
from services.storage.jobs import ALLOWED_TRANSITIONS, TERMINAL_STATES

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(state: JobState = JobState.QUEUED) -> JobRecord:
    return JobRecord(
        job_id="20250102T030405Z-abc",
        tenant="acme",
        state=state,
        created_at=NOW,
        updated_at=NOW,
        version=3,
        input_keys=("acme/s/x.h5",),
        options={"method": "diffusion", "samples": 8},
        content_sha256={"acme/s/x.h5": "00" * 32},
        model_sha256={"prior": "ab" * 32},
        processing_key="11" * 32,
        idempotency_key="client-1",
        flow_run_id="flow-7",
        progress_done=2,
        progress_total=5,
        timings={"load": 0.5},
        artefacts=("reconstruction.h5",),
        purged_at=NOW,
    )


def test_json_round_trip_keeps_every_field() -> None:
    original = record(JobState.RUNNING)
    assert JobRecord.from_json(original.to_json()) == original


def test_json_form_is_documented_and_stamped() -> None:
    document = json.loads(record().to_json())
    assert document["state"] == "queued"
    assert document["progress"] == {"done": 2, "total": 5}
    assert document["research_use_only"] == "research use only, not for diagnosis"
    assert document["created_at"] == "2025-01-02T03:04:05+00:00"


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"job_id": "x", "state": "weird"}'])
def test_corrupt_records_raise_storage_errors(data: bytes) -> None:
    with pytest.raises(StorageError):
        JobRecord.from_json(data)


def test_transitions_set_start_and_finish_times() -> None:
    running = record().with_state(JobState.RUNNING)
    assert running.started_at is not None and running.finished_at is None
    done = running.with_state(JobState.SUCCEEDED)
    assert done.finished_at is not None and done.started_at == running.started_at
    again = done.started_at
    assert running.with_state(JobState.QUEUED).with_state(JobState.RUNNING).started_at == again


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_never_change(terminal: JobState) -> None:
    assert terminal.terminal and ALLOWED_TRANSITIONS[terminal] == frozenset()
    for target in JobState:
        with pytest.raises(InvalidTransitionError):
            record(terminal).with_state(target)


def test_queued_job_cannot_succeed_without_running() -> None:
    with pytest.raises(InvalidTransitionError, match="queued to succeeded"):
        record().with_state(JobState.SUCCEEDED)
