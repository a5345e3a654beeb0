#!/usr/bin/env python3
"""Bounded load test of the mrdiff API on loopback: submissions, then status reads.

    python scripts/load_test.py                       # self-contained (below)
    python scripts/load_test.py --base-url http://127.0.0.1:8000 --api-key mrd_...

Self-contained mode starts, on loopback only: a nanio S3 server, a throwaway Prefect server with
the ``process-job`` deployment registered but *not served* (so submitted work queues, exactly
what a burst looks like before workers catch up), and the API as its own uvicorn process. It
then sends ``--submissions`` multipart uploads (each a distinct small fastMRI HDF5, so none is
deduplicated) and ``--reads`` ``GET /v1/jobs/{id}`` with ``--concurrency`` requests in flight,
prints p50/p99 latency and the error count per kind, and (with ``--markdown``) appends the
table and the command to a file. Everything is bounded: a fixed number of requests, a timeout
per request, and a deadline for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LOOPBACK_PREFIXES = ("http://127.", "http://localhost", "http://[::1]")
OPTIONS = json.dumps({"method": "zero-filled"})
RUN_DEADLINE_SECONDS = 900
API_START_SECONDS = 300


@dataclass
class Samples:
    """Latencies (seconds) and errors of one kind of request."""

    name: str
    expected_status: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    def row(self) -> str:
        total = len(self.latencies) + len(self.errors)
        return (
            f"| {self.name} | {total} | {self.percentile(50):.1f} | {self.percentile(99):.1f} "
            f"| {max(self.latencies, default=0) * 1000:.1f} | {len(self.errors)} |"
        )


def tiny_kspace(seed: int, slices: int = 2, size: int = 32) -> bytes:
    """A distinct fastMRI-style single-coil HDF5 of a few kB."""
    rng = np.random.default_rng(seed)
    shape = (slices, size, size)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("kspace", data=kspace)
    return buffer.getvalue()


async def timed(samples: Samples, request: asyncio.Future[httpx.Response] | object) -> str | None:
    started = time.perf_counter()
    try:
        response = await request  # type: ignore[misc]
    except httpx.HTTPError as error:
        samples.errors.append(f"{type(error).__name__}: {error}")
        return None
    elapsed = time.perf_counter() - started
    if response.status_code != samples.expected_status:
        samples.errors.append(f"{response.status_code}: {response.text[:200]}")
        return None
    samples.latencies.append(elapsed)
    return str(response.json().get("id", ""))


async def run_load(
    base_url: str, api_key: str, submissions: int, reads: int, concurrency: int
) -> tuple[Samples, Samples, float]:
    """Send the submissions, then the status reads; returns both samples and the wall time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    submit = Samples("POST /v1/jobs (multipart upload, 202)", 202)
    status = Samples("GET /v1/jobs/{id} (status read, 200)", 200)
    gate = asyncio.Semaphore(concurrency)
    payloads = [tiny_kspace(seed) for seed in range(submissions)]
    salt = secrets.token_hex(4)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=120
    ) as client:

        async def one_submission(index: int) -> str | None:
            async with gate:
                return await timed(
                    submit,
                    client.post(
                        "/v1/jobs",
                        files={
                            "file": (
                                f"load-{salt}-{index}.h5",
                                payloads[index],
                                "application/octet-stream",
                            )
                        },
                        data={"options": OPTIONS},
                    ),
                )

        ids = [i for i in await asyncio.gather(*map(one_submission, range(submissions))) if i]
        if not ids:
            raise SystemExit(f"no submission succeeded: {submit.errors[:3]}")

        async def one_read(index: int) -> str | None:
            async with gate:
                return await timed(status, client.get(f"/v1/jobs/{ids[index % len(ids)]}"))

        await asyncio.gather(*map(one_read, range(reads)))
    return submit, status, time.perf_counter() - started


def free_port() -> int:
    from services.storage.local_server import free_port as pick

    return pick()


def wait_until_up(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = API_START_SECONDS
) -> float:
    """Wait for ``/healthz``; returns the start-up time. Start-up is not measured by the test:
    on a machine busy with training, importing the API alone can take a minute."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(
                f"the API process exited with {process.returncode}: "
                f"{log.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(
        f"the API did not come up in {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )


@contextlib.contextmanager
def self_contained_stack(workdir: Path) -> Iterator[tuple[str, str]]:
    """nanio + Prefect (deployment registered, not served) + the API process; yields
    (base URL, API key)."""
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.process_job import process_job
    from services.api.auth import ApiKeyStore
    from services.settings import load_settings
    from services.storage import Storage
    from services.storage.local_server import start_local_s3

    settings = load_settings(
        environment="development",
        data_dir=workdir / "data",
        s3_endpoint=f"127.0.0.1:{free_port()}",
        s3_access_key=f"load-{secrets.token_hex(4)}",
        s3_secret_key=secrets.token_urlsafe(24),
        api_port=free_port(),
    )
    with start_local_s3(settings), prefect_test_harness(server_startup_timeout=240):
        prefect_url = str(PREFECT_API_URL.value())
        settings = settings.model_copy(update={"prefect_api_url": prefect_url})
        Storage.from_settings(settings).ensure_buckets()
        deployment: Any = process_job.to_deployment(name="process-job")  # sync outside a loop
        deployment.apply()
        key = (
            ApiKeyStore(settings.api_keys_path, settings.api_pepper.get_secret_value())
            .create("load")
            .secret
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PREFECT_API_URL": prefect_url,
            "MRDIFF_ENVIRONMENT": "development",
            "MRDIFF_DATA_DIR": str(settings.data_dir),
            "MRDIFF_S3_ENDPOINT": settings.s3_endpoint,
            "MRDIFF_S3_ACCESS_KEY": settings.s3_access_key,
            "MRDIFF_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "MRDIFF_PREFECT_API_URL": prefect_url,
            "MRDIFF_API_PORT": str(settings.api_port),
        }
        log_path = workdir / "api.log"
        log = open(log_path, "wb")  # noqa: SIM115 (closed below)
        api = subprocess.Popen(
            [sys.executable, "-m", "services.api"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{settings.api_port}"
        try:
            startup = wait_until_up(base_url, api, log_path)
            print(f"API up after {startup:.1f} s", file=sys.stderr)
            yield base_url, key
        finally:
            api.terminate()
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
            log.close()


def report(submit: Samples, status: Samples, wall: float, concurrency: int, command: str) -> str:
    lines = [
        f"### API load test ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`",
        "",
        f"{concurrency} requests in flight, loopback only, wall time {wall:.1f} s; submissions "
        "answered 202 while the work queued (deployment registered, not served).",
        "",
        "| request | count | p50 ms | p99 ms | max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        submit.row(),
        status.row(),
    ]
    for samples in (submit, status):
        if samples.errors:
            lines += ["", f"First errors of {samples.name}: {samples.errors[:3]}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an API already running on loopback")
    parser.add_argument("--api-key", help="key for --base-url")
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args(argv)
    if not (20 <= args.concurrency <= 50):
        raise SystemExit("--concurrency must be 20-50")
    if not (1 <= args.submissions <= 500 and 1 <= args.reads <= 2000):
        raise SystemExit("keep the run bounded: <= 500 submissions and <= 2000 reads")
    command = "python scripts/load_test.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("mrd_")
    )

    def go(base_url: str, key: str) -> tuple[Samples, Samples, float]:
        if not base_url.startswith(LOOPBACK_PREFIXES):
            raise SystemExit("the load test only targets loopback addresses")
        return asyncio.run(
            asyncio.wait_for(
                run_load(base_url, key, args.submissions, args.reads, args.concurrency),
                RUN_DEADLINE_SECONDS,
            )
        )

    if args.base_url:
        if not args.api_key:
            raise SystemExit("--api-key is required with --base-url")
        submit, status, wall = go(args.base_url, args.api_key)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="mrdiff-load-") as work,
            self_contained_stack(Path(work)) as (base_url, key),
        ):
            submit, status, wall = go(base_url, key)
    text = report(submit, status, wall, args.concurrency, command)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0 if not (submit.errors or status.errors) else 1


if __name__ == "__main__":
    sys.exit(main())
