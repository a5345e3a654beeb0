"""Screenshot the Prefect UI of the running stack with headless Chromium (Debian ``chromium``).

    python scripts/screenshot_prefect_ui.py                  # -> docs/prefect-ui.png
    python scripts/screenshot_prefect_ui.py --page runs --out docs/prefect-runs.png

``--page flow-run`` (default) shows the newest finished ``process-job`` flow run with its task
runs and artifacts; ``runs`` the flow-run list; ``artifacts`` the artifacts page. Run
``mrdiff demo`` first so there is something to see. Chromium runs with a throwaway profile,
no network beyond the loopback UI, and no GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.settings import get_settings  # noqa: E402
from services.stack.components import StackPlan  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
)


def newest_job_run(api_url: str) -> str:
    """Id of the newest completed ``process-job`` flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["process-job"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=1,
        )
    if not runs:
        raise SystemExit("no finished process-job flow run yet; run `mrdiff demo` first")
    return str(runs[0].id)


def screenshot(url: str, out: Path, chromium: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mrdiff-chromium-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({result.returncode}): {result.stderr[-800:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", choices=("flow-run", "runs", "artifacts"), default="flow-run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "prefect-ui.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    plan = StackPlan.from_settings(get_settings())
    if args.page == "flow-run":
        url = f"{plan.prefect_ui_url}/runs/flow-run/{newest_job_run(plan.prefect_api_url)}"
    else:
        url = f"{plan.prefect_ui_url}/{args.page}"
    screenshot(url, args.out, args.chromium)
    print(f"saved {args.out} ({url})")


if __name__ == "__main__":
    main()
