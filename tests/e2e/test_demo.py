"""`mrdiff demo` end to end, as the README's run command does it after `make demo`'s set-up.

A fresh data folder (no sample data, no S3 objects, no Prefect database) and free loopback
ports: the demo brings up the whole stack (nanio, Prefect server, Ray head, the served
deployments, the API), makes the sample data offline, pushes both studies through, prints the
summary and every URL, and leaves the stack running; `mrdiff status` then sees it up and
`mrdiff down` stops every process it started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY_DASHBOARD_PORT = 8265


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def mrdiff(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_the_stack_up(tmp_path: Path) -> None:
    from services.settings import Settings

    configurable = "ray_dashboard_port" in Settings.model_fields
    if not configurable and port_taken(RAY_DASHBOARD_PORT):
        pytest.skip(f"port {RAY_DASHBOARD_PORT} (Ray dashboard) is in use by another stack")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MRDIFF_", "PREFECT_"))},
        "MRDIFF_DATA_DIR": str(tmp_path / "data"),
        "MRDIFF_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
        "MRDIFF_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "MRDIFF_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "MRDIFF_API_PORT": str(free_port()),
        "MRDIFF_RAY_DASHBOARD_PORT": str(free_port()),
        "MRDIFF_INGEST_QUIET_SECONDS": "3",
    }
    try:
        demo = mrdiff(["demo", "--method", "zero-filled", "--timeout", "900"], env, 1500)
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output[-4000:]
        assert "mrdiff demo" in output and output.count("succeeded") >= 2
        for where in ("Prefect UI", "Ray dashboard", "results in S3", "viewer"):
            assert where in output
        status = mrdiff(["status"], env, 120)
        assert status.returncode == 0, status.stdout + status.stderr
        reports = sorted((tmp_path / "data" / "demo" / "results").glob("*/report.json"))
        assert [path.parent.name for path in reports] == ["dicom", "kspace"]
        for path in reports:
            report = json.loads(path.read_text())
            assert report["research_use_only"] == "research use only, not for diagnosis"
            assert len(report["per_slice"]) == report["slices"] == 8
        again = mrdiff(["demo", "--method", "zero-filled", "--timeout", "600"], env, 900)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]  # found, not redone
    finally:
        down = mrdiff(["down"], env, 300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (tmp_path / "data" / "stack" / "state.json").exists()
