"""Prefect artifacts an operator reads in the UI: per-slice progress, a table per study, links.

Artifact keys follow Prefect's rule (lowercase letters, digits, dashes); a job's artifacts share
the key prefix ``job-<job id>`` so the Artifacts page groups every run of one job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from services.recon.io import RESEARCH_USE_ONLY
from services.settings import Settings
from services.storage.storage import Storage

LINK_LIFETIME = timedelta(days=7)


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key built from ``parts``."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:200]


class ProgressArtifact:
    """Per-slice progress of a job as a Prefect progress artifact (percent)."""

    def __init__(self, job_id: str) -> None:
        self._id = cast(
            UUID,
            create_progress_artifact(
                0.0, key=artifact_key("job", job_id, "progress"), description="slices done"
            ),
        )

    def update(self, done: int, total: int) -> None:
        percent = 100.0 * done / total if total else 100.0
        update_progress_artifact(self._id, percent, description=f"{done} of {total} slices done")


def api_urls(settings: Settings, tenant: str, job_id: str) -> dict[str, str]:
    """Where a viewer finds the job through the HTTP API."""
    base = f"http://{settings.api_host}:{settings.api_port}"
    return {
        "status": f"{base}/v1/jobs/{job_id}",
        "results": f"{base}/v1/jobs/{job_id}/results",
        "viewer": f"{base}/viewer/{job_id}",
    }


def publish_job_artifacts(
    storage: Storage,
    settings: Settings,
    tenant: str,
    job_id: str,
    report: Mapping[str, Any],
    artefacts: Sequence[str],
) -> None:
    """A per-slice table, a markdown summary with links, and a link to the viewer."""
    rows = [
        {key: _cell(value) for key, value in row.items()} for row in report.get("per_slice", [])
    ]
    create_table_artifact(
        rows,
        key=artifact_key("job", job_id, "slices"),
        description=f"Job {job_id} ({tenant}): per-slice results. {RESEARCH_USE_ONLY}.",
    )
    urls = api_urls(settings, tenant, job_id)
    links = [
        f"- [{name}]({storage.presigned_result_url(tenant, job_id, name, LINK_LIFETIME)})"
        for name in artefacts
        if not name.startswith("previews/") or name.endswith("-000.png")
    ]
    timings = report.get("timings_seconds", {})
    lines = [
        f"# Job `{job_id}` (tenant `{tenant}`)",
        "",
        f"**{RESEARCH_USE_ONLY}**",
        "",
        "| | |",
        "|---|---|",
        f"| input | {report.get('input_format')} ({report.get('slices')} slices) |",
        f"| method | {report.get('method') or '-'} |",
        f"| seed | {report.get('seeds', {}).get('base')} |",
        f"| models | {_models(report.get('models', {}))} |",
        f"| simulated k-space | {report.get('simulated_kspace')} |",
        f"| compute (sum of slices) | {timings.get('compute_seconds', 0.0):.2f} s |",
        f"| pipeline wall time | {timings.get('pipeline_seconds', 0.0):.2f} s |",
        f"| pipeline overhead | {100 * timings.get('overhead_fraction', 0.0):.1f} % |",
        "",
        f"API: [status]({urls['status']}) · [results]({urls['results']}) · "
        f"[viewer]({urls['viewer']})",
        "",
        f"Results in `s3://{storage.results_bucket}/{tenant}/jobs/{job_id}/` "
        f"(links valid {LINK_LIFETIME.days} days):",
        "",
        *links,
    ]
    create_markdown_artifact(
        "\n".join(lines),
        key=artifact_key("job", job_id, "summary"),
        description=f"Job {job_id}: summary and links",
    )
    create_link_artifact(
        urls["viewer"],
        link_text=f"viewer for job {job_id}",
        key=artifact_key("job", job_id, "viewer"),
        description="reconstruction, uncertainty and anomaly maps in the mrdiff viewer",
    )


def publish_ingest_table(rows: Sequence[Mapping[str, Any]], description: str) -> None:
    """The table of what one ingest run found and did."""
    create_table_artifact(
        [{key: _cell(value) for key, value in row.items()} for row in rows]
        or [{"study": "-", "action": "nothing new"}],
        key="ingest-studies",
        description=description,
    )


def _models(models: Mapping[str, str]) -> str:
    if not models:
        return "none (baseline method)"
    return ", ".join(f"{name} `{digest[:12]}`" for name, digest in models.items())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list | tuple):
        return "; ".join(str(item) for item in value)
    return value
