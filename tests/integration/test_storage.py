"""Storage against a real nanio S3 server: inbox, quarantine, job records, results, URLs."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from minio.error import S3Error
from pydantic import SecretStr

from services.recon.errors import InputError
from services.settings import load_settings
from services.storage import (
    ConflictError,
    InvalidTransitionError,
    JobRecord,
    JobState,
    ObjectNotFoundError,
    PublishConflictError,
    RetryPolicy,
    Storage,
    processing_key,
)
from services.storage.local_server import (
    InProcessS3Server,
    free_port,
    port_is_open,
    start_local_s3,
    stop_local_s3,
)
from tests.integration.conftest import S3Server

OPTIONS = {"method": "zero-filled", "seed": 0}
MODEL = {"prior": "ab" * 32}


def test_ensure_buckets_is_idempotent(storage: Storage) -> None:
    assert storage.ensure_buckets() == []
    assert storage.objects.client.bucket_exists(storage.raw_bucket)
    assert storage.objects.client.bucket_exists(storage.results_bucket)


def test_raw_upload_hash_and_atomic_download(storage: Storage, tenant: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    key = storage.put_raw(tenant, "study-1/knee.h5", data)
    assert key == f"{tenant}/study-1/knee.h5"
    assert storage.raw_sha256(key) == hashlib.sha256(data).hexdigest()
    target = storage.download_raw(key, tmp_path / "in" / "knee.h5")
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["knee.h5"]  # no temp left
    info = storage.raw_info(key)
    assert info is not None and info.size == len(data)
    with pytest.raises(ObjectNotFoundError):
        storage.raw_sha256(f"{tenant}/nope.h5")


def test_polling_returns_each_new_object_once(storage: Storage, tenant: str) -> None:
    first = storage.put_raw(tenant, "a/one.h5", b"1")
    second = storage.put_raw(tenant, "two.h5", b"2")
    listing = storage.list_new_raw(tenant=tenant)
    assert sorted(o.key for o in listing.objects) == sorted([first, second])
    assert {o.tenant for o in listing.objects} == {tenant}
    assert storage.list_new_raw(listing.marker, tenant=tenant).objects == []

    third = storage.put_raw(tenant, "a/three.h5", b"3")
    again = storage.list_new_raw(listing.marker, tenant=tenant)
    assert [o.key for o in again.objects] == [third]

    storage.put_raw(tenant, "two.h5", b"2, corrected")  # new content under the same key
    changed = storage.list_new_raw(again.marker, tenant=tenant)
    assert [o.key for o in changed.objects] == [second]
    assert storage.list_new_raw(changed.marker, tenant=tenant).objects == []


def test_bare_keys_belong_to_the_default_tenant(storage: Storage) -> None:
    key = f"bare-{time.time_ns()}.h5"
    storage.objects.put_bytes(storage.raw_bucket, key, b"x")
    try:
        found = {o.key: o for o in storage.list_raw("default")}
        assert found[key].tenant == "default" and found[key].study is None
    finally:
        storage.objects.delete(storage.raw_bucket, key)


def test_quarantine_moves_object_out_of_the_inbox(storage: Storage, tenant: str) -> None:
    key = storage.put_raw(tenant, "s1/broken.h5", b"not hdf5")
    moved = storage.quarantine(key, "not an HDF5 file")
    assert storage.raw_info(key) is None
    assert key not in {o.key for o in storage.list_raw(tenant)}
    assert storage.list_new_raw(tenant=tenant).objects == []
    copy = storage.objects.get_bytes(storage.raw_bucket, moved.object_key)
    assert copy == b"not hdf5"
    assert moved.object_key.startswith(f"{tenant}/_quarantine/")
    reason = json.loads(storage.objects.get_bytes(storage.raw_bucket, moved.reason_key))
    assert reason["original_key"] == key
    assert reason["reason"] == "not an HDF5 file"
    assert reason["research_use_only"] == "research use only, not for diagnosis"
    with pytest.raises(InputError):
        storage.quarantine(moved.object_key, "again")


def test_job_lifecycle_and_results_visibility(storage: Storage, tenant: str) -> None:
    raw = storage.put_raw(tenant, "s/x.h5", b"x")
    job = storage.jobs.create(tenant, input_keys=[raw], options=OPTIONS, model_sha256=MODEL)
    assert job.created and job.record.state is JobState.QUEUED and job.record.version == 1
    job_id = job.record.job_id

    running = storage.jobs.start(tenant, job_id, flow_run_id="flow-1", total=3)
    assert running.state is JobState.RUNNING and running.started_at is not None
    assert storage.jobs.set_progress(tenant, job_id, 2).progress_done == 2
    assert storage.jobs.set_progress(tenant, job_id, 1).progress_done == 2  # never backwards

    with storage.stage_results(tenant, job_id) as staging:
        staging.put_bytes("reconstruction.h5", b"recon")
        staging.put_bytes("report.json", b"{}")
        assert storage.objects.list(storage.results_bucket, f"{tenant}/jobs/{job_id}/") != []
        with pytest.raises(ConflictError):  # running: nothing listed yet
            storage.list_results(tenant, job_id)
        names = staging.publish()
    assert sorted(names) == ["reconstruction.h5", "report.json"]
    assert storage.objects.list(storage.results_bucket, f"{tenant}/_staging/") == []

    done = storage.jobs.succeed(tenant, job_id, artefacts=names, timings={"total": 1.5})
    assert done.state is JobState.SUCCEEDED and done.progress_done == 3
    assert done.finished_at is not None and done.timings == {"total": 1.5}
    listed = {r.name: r for r in storage.list_results(tenant, job_id)}
    assert set(listed) == {"reconstruction.h5", "report.json"}
    assert storage.get_result(tenant, job_id, "reconstruction.h5") == b"recon"

    record = json.loads(
        storage.objects.get_bytes(storage.results_bucket, f"{tenant}/jobs/{job_id}/job.json")
    )
    assert record["state"] == "succeeded" and record["flow_run_id"] == "flow-1"
    assert record["research_use_only"] == "research use only, not for diagnosis"
    with pytest.raises(InvalidTransitionError):
        storage.jobs.start(tenant, job_id)
    assert [r.job_id for r in storage.jobs.list(tenant)] == [job_id]


def test_failed_attempt_leaves_no_staged_or_published_results(
    storage: Storage, tenant: str
) -> None:
    job_id = storage.jobs.create(tenant, input_keys=["k"]).record.job_id
    storage.jobs.start(tenant, job_id)
    with pytest.raises(RuntimeError, match="boom"), storage.stage_results(tenant, job_id) as staged:
        staged.put_bytes("reconstruction.h5", b"half")
        raise RuntimeError("boom")
    failed = storage.jobs.fail(tenant, job_id, "boom\nwith a traceback line")
    assert failed.error == "boom with a traceback line"
    remaining = storage.objects.list(storage.results_bucket, f"{tenant}/")
    assert [item.key for item in remaining] == [f"{tenant}/jobs/{job_id}/job.json"]
    with pytest.raises(ConflictError):
        storage.list_results(tenant, job_id)


def test_publish_never_overwrites_existing_results(storage: Storage, tenant: str) -> None:
    job_id = storage.jobs.create(tenant, input_keys=["k"]).record.job_id
    with storage.stage_results(tenant, job_id) as first:
        first.put_bytes("reconstruction.h5", b"first")
        first.publish()
    with storage.stage_results(tenant, job_id) as second:
        second.put_bytes("reconstruction.h5", b"second")
        second.put_bytes("extra.png", b"png")
        with pytest.raises(PublishConflictError) as refused:
            second.publish()
        assert refused.value.keys == [f"{tenant}/jobs/{job_id}/reconstruction.h5"]
        key = f"{tenant}/jobs/{job_id}/"
        assert storage.objects.get_bytes(storage.results_bucket, key + "reconstruction.h5") == (
            b"first"
        )
        assert not storage.objects.exists(storage.results_bucket, key + "extra.png")
        second.publish(overwrite=True)
        assert storage.objects.get_bytes(storage.results_bucket, key + "reconstruction.h5") == (
            b"second"
        )


def test_stale_writer_gets_a_conflict_not_a_silent_overwrite(storage: Storage, tenant: str) -> None:
    job_id = storage.jobs.create(tenant, input_keys=["k"]).record.job_id
    reader_a = storage.jobs.get(tenant, job_id)
    reader_b = storage.jobs.get(tenant, job_id)
    storage.jobs.save(replace(reader_a, flow_run_id="from-a"))
    with pytest.raises(ConflictError):
        storage.jobs.save(replace(reader_b, flow_run_id="from-b"))
    assert storage.jobs.get(tenant, job_id).flow_run_id == "from-a"


def test_concurrent_updates_lose_nothing(storage: Storage, tenant: str) -> None:
    job_id = storage.jobs.create(tenant, input_keys=["k"]).record.job_id
    writers, increments = 3, 4

    def bump(record: JobRecord) -> JobRecord:
        count = record.timings.get("count", 0.0)
        return replace(record, timings={**record.timings, "count": count + 1})

    def work() -> None:
        for _ in range(increments):
            storage.jobs.update(tenant, job_id, bump)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = storage.jobs.get(tenant, job_id)
    assert final.timings["count"] == writers * increments
    assert final.version == 1 + writers * increments
    assert storage.objects.list(storage.results_bucket, f"{tenant}/_locks/") == []


def test_idempotency_key_returns_the_same_job(storage: Storage, tenant: str) -> None:
    first = storage.jobs.create(tenant, input_keys=["a"], idempotency_key="req-1")
    second = storage.jobs.create(tenant, input_keys=["a"], idempotency_key="req-1")
    other = storage.jobs.create(tenant, input_keys=["a"], idempotency_key="req-2")
    assert first.created and not second.created and other.created
    assert second.record.job_id == first.record.job_id != other.record.job_id


def test_same_input_options_and_model_are_processed_once(storage: Storage, tenant: str) -> None:
    raw = storage.put_raw(tenant, "s/vol.h5", b"volume bytes")
    key = storage.processing_key_for(raw, OPTIONS, MODEL)
    assert key == processing_key(
        hashlib.sha256(b"volume bytes").hexdigest(), OPTIONS, MODEL, tenant
    )
    first = storage.jobs.create(tenant, input_keys=[raw], processing_key=key)
    duplicate = storage.jobs.create(tenant, input_keys=[raw], processing_key=key)
    assert not duplicate.created and duplicate.record.job_id == first.record.job_id
    assert storage.find_processed(tenant, key) is None  # queued, not yet processed

    storage.jobs.start(tenant, first.record.job_id)
    storage.jobs.fail(tenant, first.record.job_id, "worker lost")
    retry = storage.jobs.create(tenant, input_keys=[raw], processing_key=key)
    assert retry.created and retry.record.job_id != first.record.job_id
    storage.jobs.start(tenant, retry.record.job_id)
    storage.jobs.succeed(tenant, retry.record.job_id)
    processed = storage.find_processed(tenant, key)
    assert processed is not None and processed.job_id == retry.record.job_id

    late = storage.jobs.create(tenant, input_keys=["other"])
    owner = storage.jobs.claim_processing_key(tenant, late.record.job_id, key)
    assert owner.job_id == retry.record.job_id
    other_key = processing_key("cd" * 32, OPTIONS, MODEL, tenant)
    claimed = storage.jobs.claim_processing_key(tenant, late.record.job_id, other_key)
    assert claimed.job_id == late.record.job_id and claimed.processing_key == other_key


def test_presigned_upload_and_download(storage: Storage, tenant: str) -> None:
    key, upload_url = storage.presigned_upload_url(tenant, "upload-7/scan.h5")
    assert httpx.put(upload_url, content=b"uploaded").status_code == 200
    assert storage.objects.get_bytes(storage.raw_bucket, key) == b"uploaded"

    job_id = storage.jobs.create(tenant, input_keys=[key]).record.job_id
    storage.jobs.start(tenant, job_id)
    with storage.stage_results(tenant, job_id) as staged:
        staged.put_bytes("report.json", b'{"ok": true}')
        staged.publish()
    with pytest.raises(ConflictError):
        storage.presigned_result_url(tenant, job_id, "report.json")
    storage.jobs.succeed(tenant, job_id, artefacts=["report.json"])
    url = storage.presigned_result_url(tenant, job_id, "report.json", timedelta(minutes=5))
    response = httpx.get(url)
    assert response.status_code == 200 and response.json() == {"ok": True}
    tampered = url.replace("report.json", "reconstruction.h5")
    assert httpx.get(tampered).status_code == 403
    with pytest.raises(InputError):
        storage.presigned_get_url("someone-elses-bucket", "k")


def test_connection_errors_are_retried_until_the_server_is_up(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        s3_endpoint=f"127.0.0.1:{free_port()}",
        s3_access_key="late",
        s3_secret_key="late-server-secret",
    )
    storage = Storage.from_settings(
        settings, RetryPolicy(attempts=40, base_delay=0.05, max_delay=0.2, jitter=False)
    )
    server = InProcessS3Server(settings)
    starter = threading.Timer(0.4, server.start)
    starter.start()
    try:
        assert sorted(storage.ensure_buckets()) == sorted(
            [settings.raw_bucket, settings.results_bucket]
        )
    finally:
        starter.join()
        server.stop()


def test_client_errors_are_not_retried(s3_server: S3Server) -> None:
    settings = s3_server.settings.model_copy(
        update={"s3_secret_key": SecretStr("wrong-secret-value")}
    )
    calls: list[float] = []
    storage = Storage.from_settings(settings, RetryPolicy(attempts=5, base_delay=0.01))
    original = storage.objects.client.bucket_exists

    def counted(bucket: str) -> bool:
        calls.append(time.monotonic())
        return original(bucket)

    storage.objects.client.bucket_exists = counted  # type: ignore[method-assign,assignment]
    with pytest.raises(S3Error, match=r"AccessDenied|SignatureDoesNotMatch"):
        storage.ensure_buckets()
    assert len(calls) == 1


def test_local_server_detached_start_and_stop(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, s3_endpoint=f"127.0.0.1:{free_port()}")
    server = start_local_s3(settings, detach=True)
    try:
        host, port = settings.s3_endpoint.split(":")
        assert port_is_open(host, int(port))
        with pytest.raises(Exception, match="already in use"):
            start_local_s3(settings)
        Storage.from_settings(settings).ensure_buckets()
        assert (settings.s3_data_dir / settings.raw_bucket).is_dir()
    finally:
        assert stop_local_s3(settings)
        server.stop()
    assert not port_is_open(host, int(port))
    assert not stop_local_s3(settings)
