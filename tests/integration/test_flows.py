"""The batch pipeline against real servers: nanio S3, a Prefect server, a local Ray cluster.

Issue 5's Must-show list, one test each: an uploaded fastMRI HDF5 and a DICOM series both
produce results; the same object uploaded twice is processed once; a corrupt object lands in
quarantine with its reason while the rest of the batch completes; a Ray actor killed mid-job
does not lose a slice; flow runs, task runs and artifacts are in the Prefect API. Plus the
deployment path (``submit_job`` -> served ``process-job`` run in its own process), the MinIO
webhook, cancellation and anomaly maps from the shipped models.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.jobs import JobOptions, cancel_job, handle_minio_event, submit_job
from pipelines.prefect_api import INGEST_DEPLOYMENT, PROCESS_JOB_DEPLOYMENT
from services.recon.errors import InputError
from services.recon.io import (
    KspaceVolume,
    read_reconstruction_h5,
    write_dicom_series,
    write_kspace_h5,
)
from services.settings import Settings, get_settings
from services.stack.process import ProcessSpec, start_until_ready, stop_process
from services.storage import JobState, Storage
from services.workers import RayConnection, WorkerPool

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}
ZERO_FILLED = {"method": "zero-filled"}


# -- inputs -------------------------------------------------------------------------------------
def phantom(slices: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Small head-like magnitude images: an ellipse with a few brighter blobs per slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    images = []
    for index in range(slices):
        head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1).astype(np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(-0.4, 0.4, 2)
            head += 0.5 * (((x - cx) / 0.15) ** 2 + ((y - cy) / 0.1) ** 2 < 1)
        images.append(head * (1.0 + 0.05 * index))
    return np.stack(images).astype(np.float32)


def kspace_h5(path: Path, slices: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A single-coil fastMRI-style HDF5 with a 1-D mask (every other column + centre)."""
    from services.recon.physics import fft2c

    images = phantom(slices, size, seed).astype(np.complex64)
    kspace = np.stack([fft2c(image) for image in images])[:, None].astype(np.complex64)
    columns = np.zeros(size, dtype=bool)
    columns[::2] = True
    columns[size // 2 - 3 : size // 2 + 3] = True
    mask = np.broadcast_to(columns, (slices, size, size)).copy()
    volume = KspaceVolume(
        kspace=(kspace * mask[:, None]).astype(np.complex64),
        multicoil=False,
        mask=mask,
        attrs={"note": "test phantom"},
        simulated=True,
        pixel_spacing_mm=(2.0, 2.0),
        source=path.name,
    )
    return write_kspace_h5(path, volume)


def dicom_series(folder: Path, slices: int = 3, size: int = 32, seed: int = 1) -> list[Path]:
    return write_dicom_series(
        folder,
        phantom(slices, size, seed) * 1000.0,
        (2.0, 2.0),
        3.0,
        series_description="mrdiff test phantom",
        seed_for_uids=seed,
    )


def upload_options(storage: Storage, tenant: str, study: str, options: dict[str, Any]) -> str:
    return storage.put_raw(tenant, f"{study}/job.json", json.dumps(options).encode())


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_settings(
    s3_server: Any, ray_cluster: RayConnection, prefect_api_url: str
) -> Iterator[Settings]:
    """Settings the flows read (MRDIFF_* environment) pointing at the test servers."""
    settings = s3_server.settings
    environment = {
        "MRDIFF_DATA_DIR": str(settings.data_dir),
        "MRDIFF_S3_ENDPOINT": settings.s3_endpoint,
        "MRDIFF_S3_ACCESS_KEY": settings.s3_access_key,
        "MRDIFF_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "MRDIFF_PREFECT_API_URL": prefect_api_url,
        "MRDIFF_RAY_ADDRESS": ray_cluster.address,  # the session's head, for served runs too
        "MRDIFF_RAY_AUTH_MODE": ray_cluster.auth_mode,
        "MRDIFF_ACTORS": "1",
        "MRDIFF_CPUS_PER_ACTOR": "1",
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def warm_pool(flow_settings: Settings) -> Iterator[WorkerPool]:
    """One started pool (models loaded once) lent to every in-process flow run."""
    from pipelines.workers import JobActor, lend_pool

    pool = WorkerPool(n_actors=1, cpus_per_actor=1, actor_class=JobActor, preload_models=False)
    with pool, lend_pool(pool):
        yield pool


@pytest.fixture(scope="module")
def served_deployments(
    flow_settings: Settings, prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """``python -m pipelines.serve`` in its own process, as under ``mrdiff up``: each flow run
    is a subprocess that joins the session's Ray head (``flow_settings``; the Ray token comes
    with the environment, see conftest.py)."""
    spec = ProcessSpec(
        name="pipelines",
        argv=[sys.executable, "-m", "pipelines.serve"],
        # ingest too: the API tests' runner may have registered process-job already
        ready=lambda: all(map(_deployment_exists, (PROCESS_JOB_DEPLOYMENT, INGEST_DEPLOYMENT))),
        env={
            "PREFECT_API_URL": prefect_api_url,
            "MRDIFF_INGEST_INTERVAL_SECONDS": "3600",
            "PYTHONPATH": str(REPO),
        },
        cwd=REPO,
        ready_timeout=600.0,  # imports prefect, torch and ray: minutes on a busy machine
    )
    running, _ = start_until_ready(spec, tmp_path_factory.mktemp("serve"))
    try:
        yield
    finally:
        stop_process(running, timeout=30.0)  # the runner, then its flow-run subprocesses


def _deployment_exists(name: str) -> bool:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except Exception:
        return False
    return True


def wait_terminal(storage: Storage, tenant: str, job_id: str, seconds: float = 600) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = storage.jobs.get(tenant, job_id).state.value
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state} after {seconds} s")


def run_ingest_inline(tenant: str) -> list[dict[str, Any]]:
    from pipelines.ingest import ingest

    return ingest(tenant=tenant, quiet_seconds=0.0, inline=True)


def job_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["job_id"]]


# -- the Must-show tests ------------------------------------------------------------------------
def test_uploaded_hdf5_and_dicom_series_both_produce_results(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    storage.put_raw(tenant, "knee-1/scan.h5", path=kspace_h5(tmp_path / "scan.h5"))
    upload_options(storage, tenant, "knee-1", ZERO_FILLED)
    for path in dicom_series(tmp_path / "dicom"):
        storage.put_raw(tenant, f"head-2/{path.name}", path=path)
    upload_options(storage, tenant, "head-2", {**ZERO_FILLED, "mask": "equispaced1d"})

    rows = run_ingest_inline(tenant)

    jobs = job_rows(rows)
    assert len(jobs) == 2, rows
    assert {row["state"] for row in jobs} == {"succeeded"}, rows
    for row in jobs:
        names = {item.name for item in storage.list_results(tenant, row["job_id"])}
        assert {
            "reconstruction.h5",
            "reconstruction.nii.gz",
            "report.json",
            "previews/reconstruction-000.png",
        } <= names
        report = json.loads(storage.get_result(tenant, row["job_id"], "report.json"))
        assert report["research_use_only"] == "research use only, not for diagnosis"
        assert report["method"] == "zero-filled"
        assert [s["index"] for s in report["per_slice"]] == list(range(report["slices"]))
        assert all(np.isfinite(s["dc_residual"]) for s in report["per_slice"])
    kinds = {
        json.loads(storage.get_result(tenant, r["job_id"], "report.json"))["input_format"]
        for r in jobs
    }
    assert kinds == {"fastmri-hdf5", "dicom-series"}
    dicom_job = next(r for r in jobs if r["kind"] == "dicom")["job_id"]
    storage.download_result(tenant, dicom_job, "reconstruction.h5", tmp_path / "out.h5")
    datasets, attrs = read_reconstruction_h5(tmp_path / "out.h5")
    assert datasets["reconstruction"].shape == (3, 32, 32)
    assert bool(attrs["simulated_kspace"]) is True
    assert "variance" not in datasets  # zero-filled does not sample: no stand-in variance
    record = storage.jobs.get(tenant, dicom_job)
    assert record.progress_done == record.progress_total == 3


def test_same_object_uploaded_twice_is_processed_once(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    source = kspace_h5(tmp_path / "twice.h5", seed=5)
    storage.put_raw(tenant, "first/twice.h5", path=source)
    storage.put_raw(tenant, "second/twice-again.h5", path=source)
    for study in ("first", "second"):
        upload_options(storage, tenant, study, ZERO_FILLED)

    rows = run_ingest_inline(tenant)
    again = run_ingest_inline(tenant)

    assert len(storage.jobs.list(tenant)) == 1, rows
    assert len({row["job_id"] for row in job_rows(rows)}) == 1
    assert any(row["action"].startswith("already") for row in rows), rows
    assert all(row["action"].startswith("already succeeded") for row in job_rows(again)), again


def test_corrupt_object_is_quarantined_while_the_batch_completes(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    storage.put_raw(tenant, "bad/broken.h5", b"this is not an HDF5 file at all")
    storage.put_raw(tenant, "notes/readme.txt", b"hello")
    storage.put_raw(tenant, "good/scan.h5", path=kspace_h5(tmp_path / "good.h5", seed=7))
    for study in ("bad", "good"):
        upload_options(storage, tenant, study, ZERO_FILLED)

    rows = run_ingest_inline(tenant)

    by_study = {row["study"]: row for row in rows}
    assert by_study[f"{tenant}/good/scan.h5"]["state"] == "succeeded"
    assert by_study[f"{tenant}/bad/broken.h5"]["state"] == "failed"
    failed = storage.jobs.get(tenant, by_study[f"{tenant}/bad/broken.h5"]["job_id"])
    assert "not an HDF5 file" in (failed.error or "")
    assert by_study[f"{tenant}/notes/readme.txt"]["action"].startswith("quarantined")
    reasons = [
        json.loads(storage.objects.get_bytes(storage.raw_bucket, item.key))
        for item in storage.objects.list(storage.raw_bucket, f"{tenant}/_quarantine/")
        if item.key.endswith("reason.json")
    ]
    by_key = {reason["original_key"]: reason["reason"] for reason in reasons}
    assert "not an HDF5 file" in by_key[f"{tenant}/bad/broken.h5"]
    assert "unsupported file type" in by_key[f"{tenant}/notes/readme.txt"]
    inbox = {item.key for item in storage.list_raw(tenant)}
    assert f"{tenant}/bad/broken.h5" not in inbox and f"{tenant}/good/scan.h5" in inbox


def test_actor_killed_mid_job_loses_no_slice(
    storage: Storage,
    tenant: str,
    flow_settings: Settings,
    warm_pool: WorkerPool,
    tmp_path: Path,
) -> None:
    """Ray restarts the killed actor and the pool resubmits its slice: all slices, once."""
    import ray

    from pipelines.process_job import process_job

    pool = warm_pool
    slices = 8
    key = storage.put_raw(tenant, "kill/scan.h5", path=kspace_h5(tmp_path / "k.h5", slices, 48))
    options = JobOptions(method="cs-l1")  # about a second per slice: time to kill mid-job
    record = storage.jobs.create(tenant, input_keys=[key], options=options.as_record()).record
    killed: list[int] = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 600  # the job itself takes minutes on a busy machine
        while time.monotonic() < deadline:
            current = storage.jobs.get(tenant, record.job_id)
            if current.state is JobState.RUNNING and current.progress_done >= 1:
                victim = pool.actors[0]
                killed.append(ray.get(victim.info.remote()).pid)
                ray.kill(victim, no_restart=False)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    process_job(tenant=tenant, job_id=record.job_id)
    killer.join()

    assert killed, "the actor was not killed during the job"
    assert ray.get(pool.actors[0].info.remote()).pid not in killed  # a restarted actor
    done = storage.jobs.get(tenant, record.job_id)
    assert done.state is JobState.SUCCEEDED, done.error
    report = json.loads(storage.get_result(tenant, record.job_id, "report.json"))
    assert [row["index"] for row in report["per_slice"]] == list(range(slices))
    assert report["seeds"]["per_slice"] == list(range(slices))


def test_flow_runs_task_runs_and_artifacts_are_in_the_prefect_api(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    storage.put_raw(tenant, "ui/scan.h5", path=kspace_h5(tmp_path / "ui.h5", seed=11))
    upload_options(storage, tenant, "ui", ZERO_FILLED)
    rows = run_ingest_inline(tenant)
    job_id = job_rows(rows)[0]["job_id"]
    record = storage.jobs.get(tenant, job_id)
    assert record.flow_run_id

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"job-{job_id}"]))
        )
        assert [str(run.id) for run in runs] == [record.flow_run_id]
        assert runs[0].state is not None and runs[0].state.is_completed()
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[runs[0].id]))
        )
        names = {task.name.rsplit("-", 1)[0] for task in tasks}
        assert {
            "start-job",
            "fetch-inputs",
            "load-study",
            "reconstruct",
            "write-results",
            "publish-results",
        } <= names
        keys = [f"job-{job_id.lower()}-{suffix}" for suffix in ("slices", "summary", "viewer")]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
        assert {artifact.key for artifact in artifacts} == set(keys)
        table = next(a for a in artifacts if a.key == keys[0])
        assert len(json.loads(str(table.data))) == 4  # one row per slice


# -- deployment path, webhook, cancellation, anomaly ----------------------------------------------
def test_submit_job_runs_through_the_served_deployment(
    storage: Storage,
    tenant: str,
    flow_settings: Settings,
    served_deployments: None,
    tmp_path: Path,
) -> None:
    key = storage.put_raw(tenant, "api/scan.h5", path=kspace_h5(tmp_path / "api.h5", seed=21))
    options = JobOptions.parse(ZERO_FILLED)

    record = submit_job(storage, tenant, [key], options, idempotency_key="retry-me")
    again = submit_job(storage, tenant, [key], options, idempotency_key="retry-me")

    assert again.job_id == record.job_id
    assert record.flow_run_id
    assert wait_terminal(storage, tenant, record.job_id) == "succeeded"
    assert storage.jobs.get(tenant, record.job_id).flow_run_id == record.flow_run_id
    same_content = submit_job(storage, tenant, [key], options)
    assert same_content.job_id == record.job_id  # processed once


MINIO_EVENT = {
    # MinIO's documented s3:ObjectCreated:Put notification (docs "Bucket Notifications").
    "EventName": "s3:ObjectCreated:Put",
    "Key": "BUCKET/KEY",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T12:00:00.000Z",
            "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {
                "principalId": "minioadmin",
                "region": "",
                "sourceIPAddress": "127.0.0.1",
            },
            "responseElements": {
                "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af92511",
                "x-amz-request-id": "17C9C7B6F3E1D2A0",
                "x-minio-deployment-id": "b0f7c2a5-0c6d-4c4b-9d3e-1a2b3c4d5e6f",
                "x-minio-origin-endpoint": "http://127.0.0.1:9000",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": "BUCKET",
                    "ownerIdentity": {"principalId": "minioadmin"},
                    "arn": "arn:aws:s3:::BUCKET",
                },
                "object": {
                    "key": "KEY",
                    "size": 0,
                    "eTag": "ETAG",
                    "contentType": "application/x-hdf5",
                    "userMetadata": {"content-type": "application/x-hdf5"},
                    "sequencer": "17C9C7B6F40A1B2C",
                },
            },
            "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
        }
    ],
}


def test_minio_webhook_event_starts_a_job(
    storage: Storage,
    tenant: str,
    flow_settings: Settings,
    served_deployments: None,
    tmp_path: Path,
) -> None:
    from urllib.parse import quote_plus

    key = storage.put_raw(tenant, "hook study/scan.h5", path=kspace_h5(tmp_path / "h.h5", seed=31))
    upload_options(storage, tenant, "hook study", ZERO_FILLED)
    info = storage.raw_info(key)
    assert info is not None
    event = json.loads(json.dumps(MINIO_EVENT))
    event["Key"] = f"{storage.raw_bucket}/{key}"
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = storage.raw_bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{storage.raw_bucket}"
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), size=info.size, eTag=info.etag)
    other_bucket = json.loads(json.dumps(event))
    other_bucket["Records"][0]["s3"]["bucket"]["name"] = "somebody-elses-bucket"

    assert handle_minio_event(other_bucket) == []
    records = handle_minio_event(event)

    assert [r.input_keys for r in records] == [(key,)]
    assert records[0].options["method"] == "zero-filled"  # job.json beside the data
    assert wait_terminal(storage, tenant, records[0].job_id) == "succeeded"
    with pytest.raises(InputError, match="record 0"):
        handle_minio_event({"Records": [{"eventName": "s3:ObjectCreated:Put"}]})


def test_cancelled_job_stops_between_slices_and_publishes_nothing(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    from pipelines.process_job import process_job

    key = storage.put_raw(tenant, "cancel/scan.h5", path=kspace_h5(tmp_path / "c.h5", 8, 48))
    record = storage.jobs.create(
        tenant, input_keys=[key], options=JobOptions(method="cs-l1").as_record()
    ).record

    def cancel_after_first_slice() -> None:
        deadline = time.monotonic() + 600  # the job itself takes minutes on a busy machine
        while time.monotonic() < deadline:
            if storage.jobs.get(tenant, record.job_id).progress_done >= 1:
                cancel_job(storage, tenant, record.job_id)
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_after_first_slice)
    canceller.start()
    state = process_job(tenant=tenant, job_id=record.job_id, return_state=True)
    canceller.join()

    assert state.is_cancelled()
    final = storage.jobs.get(tenant, record.job_id)
    assert final.state is JobState.CANCELLED
    assert final.progress_done < final.progress_total
    published = storage.objects.list(storage.results_bucket, f"{tenant}/jobs/{record.job_id}/")
    assert [item.key.rsplit("/", 1)[-1] for item in published] == ["job.json"]
    assert storage.objects.list(storage.results_bucket, f"{tenant}/_staging/") == []


def test_anomaly_option_adds_anomaly_maps_from_the_shipped_models(
    storage: Storage, tenant: str, flow_settings: Settings, warm_pool: WorkerPool, tmp_path: Path
) -> None:
    """Reconstruction plus Wolleb-style anomaly maps with the shipped prior and classifier."""
    from pipelines.process_job import process_job

    key = storage.put_raw(tenant, "anomaly/scan.h5", path=kspace_h5(tmp_path / "a.h5", 2, 32))
    options = JobOptions(method="zero-filled", anomaly=True)
    record = storage.jobs.create(tenant, input_keys=[key], options=options.as_record()).record

    state = process_job(tenant=tenant, job_id=record.job_id, return_state=True)

    assert state.is_completed(), storage.jobs.get(tenant, record.job_id).error
    names = {item.name for item in storage.list_results(tenant, record.job_id)}
    assert {"reconstruction.h5", "anomaly_map.nii.gz", "previews/anomaly-000.png"} <= names
    storage.download_result(tenant, record.job_id, "reconstruction.h5", tmp_path / "out.h5")
    datasets, _ = read_reconstruction_h5(tmp_path / "out.h5")
    anomaly_map = datasets["anomaly_map"]
    assert anomaly_map.shape == datasets["reconstruction"].shape == (2, 32, 32)
    assert np.isfinite(anomaly_map).all() and (anomaly_map >= 0).all()
    report = json.loads(storage.get_result(tenant, record.job_id, "report.json"))
    assert all(s["anomaly_seconds"] > 0 for s in report["per_slice"])
    names = list(report["models"])  # model name -> sha256
    assert len(names) == 2 and any("classifier" in n for n in names)
    assert any("prior" in n for n in names)
