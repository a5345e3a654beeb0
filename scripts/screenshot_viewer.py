#!/usr/bin/env python3
"""Open the mrdiff viewer for a finished job in headless Chromium, check it, save a screenshot.

    python scripts/screenshot_viewer.py --base-url http://127.0.0.1:8000 --api-key mrd_... \
        --job JOB_ID                       # or: --submit knee.h5 --options '{"method": ...}'
        [--out docs/viewer.png]

Uses Debian's chromium (``apt-get install -y chromium``) with a fresh ``--user-data-dir`` and no
background networking; only the loopback API is contacted. The key reaches the page in the URL
fragment (never sent to a server), which the page moves to sessionStorage. The page is first
rendered with ``--dump-dom`` to check that it reached state ``ready`` with its three panels, then
captured with ``--screenshot``. Exit code 0 only when both worked.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "viewer.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
)
PANELS = ("panel-reconstruction", "panel-uncertainty", "panel-anomaly")


class ViewerCheck(NamedTuple):
    """What the rendered page showed."""

    state: str
    panels: dict[str, bool]
    """Panel id -> an image was loaded into it (False: the panel says why it is empty)."""
    status: str


def find_chromium() -> str:
    """Path of a Chromium binary, or SystemExit with how to install one."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("chromium not found: apt-get install -y chromium")


def run_chromium(url: str, *extra: str, budget_ms: int = 20000, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="mrdiff-chromium-") as profile:
        command = [
            find_chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-1500:]}")
    return done.stdout


def viewer_url(base_url: str, job_id: str, api_key: str) -> str:
    """The viewer page of ``job_id`` with the key handed over in the fragment."""
    return f"{base_url.rstrip('/')}/viewer/{job_id}#key={api_key}"


def inspect_dom(html: str) -> ViewerCheck:
    """Read the page's state, its panels and its status line from the rendered DOM."""
    body = re.search(r"<body[^>]*\bdata-state=\"([^\"]*)\"", html)
    panels = {}
    for panel in PANELS:
        tag = re.search(rf"<figure[^>]*\bid=\"{panel}\"[^>]*>", html)
        panels[panel] = bool(tag and 'data-loaded="true"' in tag.group(0))
    status = re.search(r"<p id=\"status\"[^>]*>(.*?)</p>", html, re.S)
    return ViewerCheck(
        state=body.group(1) if body else "missing",
        panels=panels,
        status=re.sub(r"<[^>]+>", "", status.group(1)).strip() if status else "",
    )


def check_viewer(base_url: str, job_id: str, api_key: str) -> ViewerCheck:
    """Render the viewer headless and report what it shows."""
    return inspect_dom(run_chromium(viewer_url(base_url, job_id, api_key), "--dump-dom"))


def screenshot(
    base_url: str, job_id: str, api_key: str, out: Path, size: tuple[int, int] = (1600, 900)
) -> Path:
    """Save a PNG of the viewer page (written beside ``out`` first, then moved into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp.png")
    run_chromium(
        viewer_url(base_url, job_id, api_key),
        f"--screenshot={temporary}",
        f"--window-size={size[0]},{size[1]}",
    )
    if not temporary.is_file() or temporary.stat().st_size == 0:
        raise RuntimeError("chromium wrote no screenshot")
    temporary.replace(out)
    return out


def submit_and_wait(
    base_url: str, api_key: str, path: Path, options: dict[str, object], timeout: float = 900
) -> str:
    """Upload ``path`` as a job, wait for it to succeed, return its id."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        response = client.post(
            "/v1/jobs",
            files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
            data={"options": json.dumps(options)},
        )
        if response.status_code != 202:
            raise SystemExit(f"submit failed: {response.status_code} {response.text}")
        job_id = str(response.json()["id"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == "succeeded":
                return job_id
            if job["state"] in {"failed", "cancelled"}:
                raise SystemExit(f"job {job_id} {job['state']}: {job.get('error')}")
            time.sleep(1)
    raise SystemExit(f"job {job_id} did not finish in {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--job", help="id of a succeeded job")
    target.add_argument("--submit", type=Path, help="upload this file as a new job first")
    parser.add_argument("--options", default="{}", help="JobOptions JSON for --submit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.base_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SystemExit("the viewer script only talks to a loopback API")
    job_id = args.job or submit_and_wait(
        args.base_url, args.api_key, args.submit, json.loads(args.options)
    )
    check = check_viewer(args.base_url, job_id, args.api_key)
    print(f"viewer state={check.state} panels={check.panels} status={check.status!r}")
    if check.state != "ready" or not check.panels["panel-reconstruction"]:
        print("the viewer did not show the job", file=sys.stderr)
        return 1
    out = screenshot(args.base_url, job_id, args.api_key, args.out)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
