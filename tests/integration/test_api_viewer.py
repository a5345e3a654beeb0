"""The viewer page in headless Debian Chromium: it loads a finished job and shows three panels."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests.integration import api_harness
from tests.integration.api_harness import ApiStack, wait_for_state
from tests.integration.test_api import FAST, kspace_h5, submit_file

# Fixtures of the real API stack (see api_harness.py).
api_settings = api_harness.api_settings
api_stack = api_harness.api_stack
api_tenant = api_harness.api_tenant
job_runner = api_harness.job_runner
prefect_api_url = api_harness.prefect_api_url


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_viewer.py"

pytestmark = [
    pytest.mark.slow,  # runs a job through Prefect and Ray, then two Chromium renders
    pytest.mark.skipif(shutil.which("chromium") is None,
                       reason="needs Debian chromium (apt-get install -y chromium)"),
]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("screenshot_viewer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_viewer_shows_a_finished_job_in_three_panels(
    api_stack: ApiStack, api_tenant: str, tmp_path: Path
) -> None:
    viewer = load_script()
    key = api_stack.key_for(api_tenant)
    with api_stack.client(key) as client:
        job = submit_file(client, "knee.h5", kspace_h5(slices=4, seed=41), FAST).json()
        wait_for_state(client, job["id"], {"succeeded"})
        page = client.get(job["links"]["viewer"])
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers

    check = viewer.check_viewer(api_stack.base_url, job["id"], key)
    assert check.state == "ready", check
    assert set(check.panels) == {"panel-reconstruction", "panel-uncertainty", "panel-anomaly"}
    assert check.panels["panel-reconstruction"], check
    assert "research use only" in check.status.lower()

    out = viewer.screenshot(api_stack.base_url, job["id"], key, tmp_path / "viewer.png")
    with Image.open(out) as shot:
        assert shot.size == (1600, 900)
        assert len(set(shot.convert("L").getdata())) > 16  # not a blank page

    refused = viewer.check_viewer(api_stack.base_url, job["id"], "mrd_wrong")
    assert refused.state == "needs-key" and "refused" in refused.status
