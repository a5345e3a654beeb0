"""The API as a process of the local stack (``mrdiff up``): uvicorn on MRDIFF_API_HOST:PORT."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.stack.process import ProcessSpec, http_ok

if TYPE_CHECKING:
    from services.stack.components import StackPlan

REPO_ROOT = Path(__file__).resolve().parents[2]


def api_server(plan: StackPlan) -> ProcessSpec:
    """``python -m services.api`` (127.0.0.1:8000 by default), ready when /healthz answers."""
    host, port = plan.settings.api_host, plan.settings.api_port
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    return ProcessSpec(
        name="api",
        argv=[sys.executable, "-m", "services.api"],
        ready=http_ok(f"{base}/healthz"),
        urls={"API": base, "API docs": f"{base}/docs", "Viewer": f"{base}/viewer/<job id>"},
        cwd=REPO_ROOT,
        ready_timeout=180.0,  # imports (FastAPI, h5py, Prefect) take a while on a busy machine
    )
