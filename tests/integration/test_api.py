"""The HTTP API on a real stack: uvicorn on loopback, nanio S3, a Prefect server with the
``process-job`` deployment served, and Ray. Issue 6 "Must show": submit -> poll -> fetch for an
HDF5 upload and a DICOM zip, idempotent retry, tenant isolation, clear 401/404/413/415/422
bodies, and cancelling a running job.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from services.recon.io import write_dicom_series
from services.settings import Settings
from services.storage import Storage
from tests.integration.api_harness import ApiStack, make_stack, wait_for_progress, wait_for_state

# Tests that run jobs through Prefect and Ray take about a minute each on a shared 2-core
# machine; they run with `make test-slow` (pytest -m slow). The rest use `light_stack`.
slow = pytest.mark.slow

FAST = {"method": "zero-filled"}
FAST_IMAGES = {"method": "zero-filled", "mask": "random1d", "accel": 4}
# The viewer shows uncertainty only for sampling methods: MRDIFF_VIEWER_DIFFUSION=1 runs the
# viewer job with the installed diffusion prior (slow on CPU; anomaly maps too when the
# classifier is installed), else with the fast zero-filled baseline.
WEIGHTS = Path(__file__).resolve().parents[2] / "services" / "recon" / "weights"
VIEWER_OPTIONS: dict[str, Any] = (
    {
        "method": "diffusion",
        "samples": 4,
        "steps": 20,
        "refine_steps": 2,
        "anomaly": (WEIGHTS / "classifier.pt").exists(),
    }
    if os.environ.get("MRDIFF_VIEWER_DIFFUSION") == "1" and (WEIGHTS / "prior.pt").exists()
    else {"method": "zero-filled"}
)


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centered orthonormal 2-D FFT (design.md convention)."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def phantom(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """(slices, size, size) ellipse phantom with a spot that moves per slice."""
    rows, columns = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    rng = np.random.default_rng(seed)
    volume = np.zeros((slices, size, size), dtype=np.float32)
    for index in range(slices):
        head = (rows / 0.8) ** 2 + (columns / 0.6) ** 2 <= 1
        spot = (rows - 0.3 * np.sin(index)) ** 2 + (columns + 0.1) ** 2 <= 0.04
        volume[index] = 0.6 * head + 0.4 * spot + 0.02 * rng.random((size, size))
    return volume


def kspace_h5(slices: int = 3, size: int = 32, seed: int = 0) -> bytes:
    """A fastMRI-style single-coil HDF5 (kspace + 1-D column mask), in memory."""
    kspace = fft2c(phantom(slices, size, seed).astype(np.complex64))
    mask = np.zeros(size, dtype=bool)
    mask[::3] = True
    mask[size // 2 - 3 : size // 2 + 3] = True
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("kspace", data=(kspace * mask).astype(np.complex64))
        h5.create_dataset("mask", data=mask)
    return buffer.getvalue()


def dicom_zip(folder: Path, slices: int = 3, size: int = 32) -> bytes:
    """A zip of a synthetic DICOM series (a phantom, no real person)."""
    files = write_dicom_series(
        folder, phantom(slices, size, seed=3) * 1000, (1.0, 1.0), 3.0, None, "api test series"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for file in files:
            bundle.write(file, f"series/{file.name}")
    return buffer.getvalue()


def submit_file(
    client: httpx.Client, name: str, data: bytes, options: Mapping[str, Any], **headers: str
) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files={"file": (name, data, "application/octet-stream")},
        data={"options": json.dumps(options)},
        headers=headers,
    )


def fetch_and_check_results(client: httpx.Client, job: dict[str, Any], slices: int) -> None:
    """Every result format answers, with the right shape and the research-use notice."""
    listing = client.get(job["links"]["results"])
    assert listing.status_code == 200, listing.text
    items = {item["name"]: item for item in listing.json()["items"]}
    for name in (
        "reconstruction.png",
        "reconstruction.npy",
        "reconstruction.nii.gz",
        "reconstruction.h5",
        "report.json",
    ):
        assert name in items, sorted(items)
    png_entry = items["reconstruction.png"]
    assert png_entry["media_type"] == "image/png" and png_entry["slices"] == slices

    png = client.get(png_entry["url"], params={"slice": slices - 1, "window": 0.8, "level": 0.4})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.width >= 32 and "research use only" in image.info.get("Disclaimer", "")
    other = client.get(png_entry["url"], params={"slice": 0})
    assert other.status_code == 200 and other.content != png.content

    volume = np.load(io.BytesIO(client.get(items["reconstruction.npy"]["url"]).content))
    assert volume.shape[0] == slices and volume.dtype == np.float32 and volume.max() > 0

    nifti = client.get(items["reconstruction.nii.gz"]["url"])
    assert nifti.status_code == 200
    loaded = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
    assert slices in loaded.shape

    h5_bytes = client.get(items["reconstruction.h5"]["url"]).content
    with h5py.File(io.BytesIO(h5_bytes), "r") as h5:
        assert h5["reconstruction"].shape == volume.shape
        assert "research use only" in str(h5.attrs["research_use_only"])

    report = client.get(items["report.json"]["url"])
    assert report.status_code == 200 and report.json()

    out_of_range = client.get(png_entry["url"], params={"slice": slices})
    assert out_of_range.status_code == 422 and "out of range" in out_of_range.json()["detail"]


@slow
def test_hdf5_upload_submit_poll_fetch(api_stack: ApiStack, api_tenant: str) -> None:
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        response = submit_file(client, "knee.h5", kspace_h5(), FAST)
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["state"] in {"queued", "running"}
        done = wait_for_state(client, job["id"], {"succeeded"})
        assert done["progress"] == {"done": 3, "total": 3, "fraction": 1.0}
        assert done["timings"] and done["error"] is None
        fetch_and_check_results(client, done, slices=3)
        listed = client.get("/v1/jobs", params={"state": "succeeded"}).json()
        assert [item["id"] for item in listed["items"]] == [job["id"]]
        assert client.get("/v1/jobs", params={"state": "failed"}).json()["items"] == []
        metrics = client.get("/metrics").text
        assert 'mrdiff_jobs{state="succeeded"}' in metrics
        assert "mrdiff_slices_processed_total" in metrics
        assert 'route="/v1/jobs/{job_id}"' in metrics


@slow
def test_dicom_zip_upload_submit_poll_fetch(
    api_stack: ApiStack, api_tenant: str, tmp_path: Path
) -> None:
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        response = submit_file(client, "series.zip", dicom_zip(tmp_path / "dicom"), FAST_IMAGES)
        assert response.status_code == 202, response.text
        job = response.json()
        assert len(job["input_keys"]) == 3
        assert all(key.startswith(f"{api_tenant}/uploads/") for key in job["input_keys"])
        done = wait_for_state(client, job["id"], {"succeeded"})
        fetch_and_check_results(client, done, slices=3)


@slow
def test_idempotent_retry_returns_the_same_job(api_stack: ApiStack, api_tenant: str) -> None:
    data = kspace_h5(seed=11)
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        first = submit_file(client, "a.h5", data, FAST, **{"Idempotency-Key": "retry-1"})
        again = submit_file(client, "a.h5", data, FAST, **{"Idempotency-Key": "retry-1"})
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        # The same raw keys as JSON under the same key: still that job.
        by_keys = client.post(
            "/v1/jobs",
            json={"input_keys": first.json()["input_keys"], "options": FAST},
            headers={"Idempotency-Key": "retry-1"},
        )
        assert by_keys.status_code == 202 and by_keys.json()["id"] == first.json()["id"]
        assert len(client.get("/v1/jobs").json()["items"]) == 1
        wait_for_state(client, first.json()["id"], {"succeeded"})


@slow
def test_tenant_isolation(api_stack: ApiStack, api_tenant: str) -> None:
    other = api_tenant + "b"
    with (
        api_stack.client(api_stack.key_for(api_tenant)) as owner,
        api_stack.client(api_stack.key_for(other)) as stranger,
    ):
        job = submit_file(owner, "mine.h5", kspace_h5(seed=5), FAST).json()
        wait_for_state(owner, job["id"], {"succeeded"})
        for method, path in (
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/results"),
            ("GET", f"/v1/jobs/{job['id']}/results/reconstruction.png"),
            ("GET", f"/v1/jobs/{job['id']}/results/reconstruction.h5"),
            ("DELETE", f"/v1/jobs/{job['id']}?purge=true"),
        ):
            answer = stranger.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["detail"] == f"no job {job['id']!r}"
        assert stranger.get("/v1/jobs").json()["items"] == []
        stolen = stranger.post("/v1/jobs", json={"input_keys": job["input_keys"], "options": FAST})
        assert stolen.status_code == 422 and "not an input of tenant" in stolen.json()["detail"]
        missing = stranger.post("/v1/jobs", json={"input_keys": [f"{other}/nothing/here.h5"]})
        assert missing.status_code == 422 and "not in the raw bucket" in missing.json()["detail"]
        assert owner.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_error_bodies_name_the_problem(light_stack: ApiStack, api_tenant: str) -> None:
    api_stack = light_stack
    with api_stack.client() as anonymous:
        no_key = anonymous.get("/v1/jobs")
        assert no_key.status_code == 401 and "missing API key" in no_key.json()["detail"]
        assert no_key.headers["www-authenticate"] == "Bearer"
        bad_key = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer mrd_forged"})
        assert bad_key.status_code == 401 and "invalid" in bad_key.json()["detail"]
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        unknown = client.get("/v1/jobs/20250101T000000Z-000000000000")
        assert unknown.status_code == 404 and "no job" in unknown.json()["detail"]
        text = client.post("/v1/jobs", content=b"hello", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415 and "text/plain" in text.json()["detail"]
        png_part = client.post("/v1/jobs", files={"file": ("x.png", b"\x89PNG....", "image/png")})
        assert png_part.status_code == 415 and "image/png" in png_part.json()["detail"]
        unknown_format = submit_file(client, "notes.bin", b"just some text", FAST)
        assert unknown_format.status_code == 415
        assert "unsupported file format" in unknown_format.json()["detail"]
        no_kspace = io.BytesIO()
        with h5py.File(no_kspace, "w") as h5:
            h5.create_dataset("image", data=np.zeros((2, 8, 8), np.float32))
        invalid = submit_file(client, "scan.h5", no_kspace.getvalue(), FAST)
        assert invalid.status_code == 422 and "kspace" in invalid.json()["detail"]
        real_kspace = io.BytesIO()
        with h5py.File(real_kspace, "w") as h5:
            h5.create_dataset("kspace", data=np.ones((2, 8, 8), np.float32))
        real = submit_file(client, "real.h5", real_kspace.getvalue(), FAST)
        assert real.status_code == 422 and "real" in real.json()["detail"].lower()
        bad_options = submit_file(client, "knee.h5", kspace_h5(), {"samples": 0})
        assert bad_options.status_code == 422 and "samples" in bad_options.json()["detail"]
        not_json = client.post(
            "/v1/jobs", files={"file": ("k.h5", kspace_h5())}, data={"options": "{nope"}
        )
        assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"]
        no_file = client.post("/v1/jobs", files={"other": ("k.h5", b"x")})
        assert no_file.status_code == 422
        bad_body = client.post("/v1/jobs", json={"input_keys": []})
        assert bad_body.status_code == 422 and "input_keys" in bad_body.json()["detail"]
        for answer in (no_file, bad_body, text, invalid, real, not_json):
            assert "Traceback" not in answer.text and answer.headers["content-type"] == (
                "application/json"
            )


@pytest.fixture
def small_limit_stack(s3_server: Any, storage: Storage) -> Iterator[ApiStack]:
    """Another API over the same S3 server, with a 64 KiB upload limit."""
    settings: Settings = s3_server.settings.model_copy(update={"max_upload_bytes": 64 * 1024})
    yield from make_stack(settings, storage)


def test_uploads_over_the_limit_get_413(small_limit_stack: ApiStack, api_tenant: str) -> None:
    big = b"\0" * (200 * 1024)
    with small_limit_stack.client(small_limit_stack.key_for(api_tenant)) as client:
        declared = client.post("/v1/jobs", files={"file": ("big.h5", big)})
        assert declared.status_code == 413
        assert "65536 bytes" in declared.json()["detail"]
        assert "/v1/uploads" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:
            yield (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.h5"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            for _ in range(20):
                yield b"\0" * 16 * 1024
            yield b"\r\n--b--\r\n"

        streamed = client.post(
            "/v1/jobs",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413 and "65536 bytes" in streamed.json()["detail"]
        assert client.get("/v1/jobs").json()["items"] == []
        presigned = client.post("/v1/uploads", json={"filename": "big.h5"})
        assert presigned.status_code == 201
        upload = presigned.json()
        assert upload["key"].startswith(f"{api_tenant}/uploads/") and upload["method"] == "PUT"


@slow
def test_presigned_upload_then_submit_by_key(api_stack: ApiStack, api_tenant: str) -> None:
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        upload = client.post("/v1/uploads", json={"filename": "large.h5"}).json()
        put = httpx.put(upload["url"], content=kspace_h5(seed=21))
        assert put.status_code == 200, put.text
        response = client.post("/v1/jobs", json={"input_keys": [upload["key"]], "options": FAST})
        assert response.status_code == 202, response.text
        wait_for_state(client, response.json()["id"], {"succeeded"})


@slow
def test_cancel_a_running_job_then_purge(api_stack: ApiStack, api_tenant: str) -> None:
    slow = {"method": "cs-l1"}
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        job = submit_file(client, "long.h5", kspace_h5(slices=24, size=64, seed=9), slow).json()
        running = wait_for_progress(client, job["id"], done_at_least=1)
        assert running["state"] == "running" and running["progress"]["total"] == 24
        cancelled = client.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["progress"]["done"] < 24
        results = client.get(f"/v1/jobs/{job['id']}/results")
        assert results.status_code == 409 and "cancelled" in results.json()["detail"]
        again = client.delete(f"/v1/jobs/{job['id']}")
        assert again.status_code == 200 and again.json()["state"] == "cancelled"
        purged = client.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
        assert purged.status_code == 200
        raw = api_stack.storage.raw_info(job["input_keys"][0])
        assert raw is not None, "purge must never remove raw inputs"


@slow
def test_purge_removes_results_but_never_inputs(api_stack: ApiStack, api_tenant: str) -> None:
    with api_stack.client(api_stack.key_for(api_tenant)) as client:
        job = submit_file(client, "p.h5", kspace_h5(seed=31), FAST).json()
        wait_for_state(client, job["id"], {"succeeded"})
        assert client.get(f"/v1/jobs/{job['id']}/results/reconstruction.png").status_code == 200
        refused = client.delete(f"/v1/jobs/{job['id']}")
        assert refused.status_code == 409 and "purge=true" in refused.json()["detail"]
        purged = client.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
        assert purged.status_code == 200 and purged.json()["state"] == "succeeded"
        assert purged.json()["purged_at"] is not None
        assert client.get(f"/v1/jobs/{job['id']}/results").json()["items"] == []
        gone = client.get(f"/v1/jobs/{job['id']}/results/reconstruction.png")
        assert gone.status_code == 404
        assert api_stack.storage.raw_info(job["input_keys"][0]) is not None
        resubmitted = submit_file(client, "p.h5", kspace_h5(seed=31), FAST).json()
        assert resubmitted["id"] != job["id"], "a purged job must not answer for its input"
        wait_for_state(client, resubmitted["id"], {"succeeded"})


def test_raw_keys_of_other_tenants_are_refused(
    light_stack: ApiStack, storage: Storage, api_tenant: str
) -> None:
    owner_key = storage.put_raw(api_tenant, "study/mine.h5", kspace_h5(seed=2))
    stranger = api_tenant + "x"
    with light_stack.client(light_stack.key_for(stranger)) as client:
        stolen = client.post("/v1/jobs", json={"input_keys": [owner_key], "options": FAST})
        assert stolen.status_code == 422 and "not an input of tenant" in stolen.json()["detail"]
        guessed = client.post("/v1/jobs", json={"input_keys": [f"{api_tenant}/study/none.h5"]})
        assert guessed.json() == stolen.json() | {"detail": guessed.json()["detail"]}
        assert "not an input of tenant" in guessed.json()["detail"]  # same answer: no leak
        missing = client.post("/v1/jobs", json={"input_keys": [f"{stranger}/nothing/here.h5"]})
        assert missing.status_code == 422 and "not in the raw bucket" in missing.json()["detail"]
        assert client.get("/v1/jobs").json()["items"] == []


def test_presigned_upload_goes_straight_to_the_raw_bucket(
    light_stack: ApiStack, storage: Storage, api_tenant: str
) -> None:
    with light_stack.client(light_stack.key_for(api_tenant)) as client:
        created = client.post("/v1/uploads", json={"filename": "large.h5", "study": "s1"})
        assert created.status_code == 201, created.text
        upload = created.json()
        assert upload["key"] == f"{api_tenant}/uploads/s1/large.h5"
        assert httpx.put(upload["url"], content=kspace_h5(seed=4)).status_code == 200
        info = storage.raw_info(upload["key"])
        assert info is not None and info.size > 0
        bad = client.post("/v1/uploads", json={"filename": "../escape.h5"})
        assert bad.status_code == 422 and "filename" in bad.json()["detail"]


def test_health_metrics_and_models(light_stack: ApiStack, api_tenant: str) -> None:
    with light_stack.client(light_stack.key_for(api_tenant)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code in {200, 503}
        assert set(ready.json()["checks"]) == {"s3", "prefect", "ray"}
        assert ready.json()["checks"]["s3"]["ok"] is True
        models = client.get("/v1/models")
        assert models.status_code == 200
        for item in models.json()["items"]:
            assert len(item["sha256"]) == 64 and item["size_bytes"] > 0
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'mrdiff_http_requests_total{method="GET",route="/v1/models",status="200"}' in (
            metrics.text
        )
        assert "mrdiff_http_request_duration_seconds_bucket" in metrics.text
        assert 'mrdiff_jobs{state="queued"}' in metrics.text


HOOK_TOKEN = "hook-token-0123456789abcdef"


@pytest.fixture
def hook_stack(s3_server: Any, storage: Storage) -> Iterator[ApiStack]:
    """The API over the S3 server with the MinIO webhook enabled."""
    settings: Settings = s3_server.settings.model_copy(
        update={"minio_webhook_token": SecretStr(HOOK_TOKEN)}
    )
    yield from make_stack(settings, storage)


def test_minio_webhook_needs_its_own_token(
    light_stack: ApiStack, hook_stack: ApiStack, api_tenant: str
) -> None:
    with light_stack.client() as client:
        disabled = client.post("/v1/hooks/minio", json={"Records": []})
        assert disabled.status_code == 404 and "disabled" in disabled.json()["detail"]
    api_key = hook_stack.key_for(api_tenant)
    with hook_stack.client(api_key) as with_api_key:
        refused = with_api_key.post("/v1/hooks/minio", json={"Records": []})
        assert refused.status_code == 401 and "webhook token" in refused.json()["detail"]
    with hook_stack.client(HOOK_TOKEN) as minio:
        test_event = minio.post("/v1/hooks/minio", json={"EventName": "s3:TestEvent"})
        assert test_event.status_code == 200 and test_event.json() == {"jobs": []}
        other_bucket = minio.post(
            "/v1/hooks/minio",
            json={
                "Records": [
                    {
                        "eventName": "s3:ObjectCreated:Put",
                        "s3": {"bucket": {"name": "someone-elses"}, "object": {"key": "a%2Fb.h5"}},
                    }
                ]
            },
        )
        assert other_bucket.status_code == 200 and other_bucket.json() == {"jobs": []}
        malformed = minio.post("/v1/hooks/minio", json={"Records": "not a list"})
        assert malformed.status_code == 422 and malformed.json()["detail"]


@slow
def test_readiness_with_the_whole_stack(api_stack: ApiStack) -> None:
    with api_stack.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert all(check["ok"] for check in ready.json()["checks"].values())


SCREENSHOT_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_viewer.py"


def load_screenshot_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("screenshot_viewer", SCREENSHOT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@slow
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian chromium (apt-get install -y chromium)"
)
def test_viewer_shows_a_finished_job_in_three_panels(
    api_stack: ApiStack, api_tenant: str, tmp_path: Path
) -> None:
    """Headless Chromium loads the viewer for a finished job: three panels, images loaded.

    With MRDIFF_VIEWER_SCREENSHOT=docs/viewer.png the screenshot is also kept there.
    """
    viewer = load_screenshot_script()
    key = api_stack.key_for(api_tenant)
    options = VIEWER_OPTIONS
    with api_stack.client(key) as client:
        job = submit_file(client, "knee.h5", kspace_h5(slices=4, size=64, seed=41), options)
        assert job.status_code == 202, job.text
        done = wait_for_state(client, job.json()["id"], {"succeeded"}, timeout=900)
        page = client.get(done["links"]["viewer"])
        assert page.status_code == 200 and "content-security-policy" in page.headers

    check = viewer.check_viewer(api_stack.base_url, done["id"], key)
    assert check.state == "ready", check
    assert set(check.panels) == {"panel-reconstruction", "panel-uncertainty", "panel-anomaly"}
    assert check.panels["panel-reconstruction"], check
    assert "research use only" in check.status.lower()

    out = viewer.screenshot(api_stack.base_url, done["id"], key, tmp_path / "viewer.png")
    with Image.open(out) as shot:
        assert shot.size == (1600, 900)
        assert len(set(shot.convert("L").getdata())) > 16  # not a blank page
    keep = os.environ.get("MRDIFF_VIEWER_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, keep)

    refused = viewer.check_viewer(api_stack.base_url, done["id"], "mrd_wrong")
    assert refused.state == "needs-key" and "refused" in refused.status
