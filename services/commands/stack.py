"""`mrdiff up`, `mrdiff down`, `mrdiff status` and `mrdiff demo`: the local stack."""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn
from rich.table import Table

from services.recon.errors import InputError
from services.settings import Settings, get_settings
from services.stack import demo as demo_flow
from services.stack.components import StackPlan
from services.stack.demo import DemoStudy
from services.stack.supervisor import Stack, StackError
from services.storage.jobs import JobRecord
from services.storage.storage import Storage

console = Console(width=120)
# The stack's processes are meant to outlive the command that started them (`up --detach`,
# `demo`); Python would otherwise warn about every Popen handle it drops while they run.
warnings.filterwarnings(
    "ignore", message=r"subprocess \d+ is still running", category=ResourceWarning
)


def _stack(settings: Settings | None = None) -> Stack:
    return Stack(StackPlan.from_settings(settings or get_settings()))


def ensure_stack() -> Stack:
    """The local stack, brought up (detached) if it is not fully running."""
    stack = _stack()
    if not stack.is_up():
        try:
            stack.up(echo=lambda line: console.print(line))
        except StackError as error:
            raise InputError(str(error)) from None
    return stack


def print_urls(stack: Stack) -> None:
    table = Table(title="mrdiff stack (research use only, not for diagnosis)", show_lines=False)
    for column in ("process", "state", "pid", "where"):
        table.add_column(column)
    for row in stack.status():
        state = (
            "ready"
            if row.running and row.ready
            else "running"
            if row.running
            else ("answering (not started by mrdiff)" if row.ready else "stopped")
        )
        where = "\n".join(f"{label}: {url}" for label, url in row.urls.items())
        table.add_row(row.name, state, str(row.pid or "-"), where)
    console.print(table)
    plan = stack.plan
    console.print(
        f"raw bucket: s3://{plan.settings.raw_bucket}  results bucket: "
        f"s3://{plan.settings.results_bucket}  logs: {plan.log_dir}"
    )


def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="return once everything is up")
    ] = False,
) -> None:
    """Start S3 (nanio), Prefect server + UI, a Ray head and the pipeline's deployments."""
    stack = _stack()
    try:
        stack.up(echo=lambda line: console.print(line))
    except StackError as error:
        raise InputError(str(error)) from None
    print_urls(stack)
    if detach:
        console.print("the stack keeps running; stop it with `mrdiff down`")
        return
    console.print("press Ctrl-C to stop everything")

    def stop_on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    reason: str | None = None
    try:
        reason = stack.watch()
    except KeyboardInterrupt:
        console.print("stopping ...")
    if reason:
        console.print(f"[red]{reason}[/red]")
    stack.down(echo=lambda line: console.print(line))
    if reason:
        sys.exit(1)


def down() -> None:
    """Stop every process `mrdiff up` started (last started first)."""
    stopped = _stack().down(echo=lambda line: console.print(line))
    console.print("stopped " + (", ".join(stopped) if stopped else "nothing (no stack running)"))


def status() -> None:
    """Show the stack's processes, whether they answer, and their URLs."""
    stack = _stack()
    print_urls(stack)
    if not stack.is_up():
        sys.exit(1)


def demo(
    method: Annotated[
        str | None,
        typer.Option(
            help="reconstruction method (default: diffusion if its weights are "
            "installed, else cs-l1)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the results")] = 1800.0,
    sample_dir: Annotated[
        Path | None, typer.Option(help="where the sample data is made (default <data_dir>/sample)")
    ] = None,
) -> None:
    """Bring the stack up, push the sample k-space and DICOM series through it, show results."""
    flow = demo_flow
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stack = ensure_stack()
    settings = stack.client_settings()
    storage = Storage.from_settings(settings)
    h5, dicom = flow.sample_data(sample_dir or settings.data_dir / "sample", console.print)
    options, note = flow.demo_options(settings, method)
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")
    studies = flow.demo_studies(h5, dicom, options)
    keys = {study.name: flow.expected_key(study, settings) for study in studies}
    flow.upload(storage, studies)
    console.print(
        f"uploaded {sum(len(s.files) for s in studies)} files to "
        f"s3://{storage.raw_bucket}/{flow.DEMO_TENANT}/ ; ingest runs after the "
        "quiet period"
    )
    flow.request_ingest(settings)
    try:
        jobs = _follow(stack, storage, studies, keys, timeout)
    except StackError as error:
        raise InputError(f"{error}\nstop it with `mrdiff down`, then run the demo again") from None
    _summary(stack, storage, studies, jobs, settings)
    missing = [name for name, job in jobs.items() if job is None or job.state.value != "succeeded"]
    if missing:
        raise InputError(f"demo studies not finished: {', '.join(missing)}; see the Prefect UI")


def _follow(
    stack: Stack,
    storage: Storage,
    studies: list[DemoStudy],
    keys: dict[str, str],
    timeout: float,
) -> dict[str, JobRecord | None]:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {
            study.name: bar.add_task(f"{study.name}: waiting for ingest", total=None)
            for study in studies
        }

        def update(jobs: dict[str, JobRecord | None]) -> None:
            for name, job in jobs.items():
                if job is None:
                    continue
                total = job.progress_total or None
                bar.update(
                    tasks[name],
                    total=total,
                    completed=job.progress_done,
                    description=f"{name}: {job.state.value}",
                )

        return demo_flow.wait_for_jobs(storage, keys, timeout, update, stack.failure)


def _summary(
    stack: Stack,
    storage: Storage,
    studies: list[DemoStudy],
    jobs: dict[str, JobRecord | None],
    settings: Settings,
) -> None:
    flow = demo_flow
    table = Table(title="mrdiff demo (research use only, not for diagnosis)")
    for column in ("study", "input", "slices", "method", "state", "compute s", "overhead", "job"):
        table.add_column(column)
    copied: list[Path] = []
    for study in studies:
        job = jobs.get(study.name)
        if job is None:
            table.add_row(
                study.name,
                study.description,
                "-",
                study.options.method,
                "not started",
                "-",
                "-",
                "-",
            )
            continue
        slices = "-"
        if job.state.value == "succeeded":
            folder = settings.data_dir / "demo" / "results" / study.name
            copied += flow.copy_results(storage, job, folder)
            slices = str(flow.reported_slices(folder))
        timings = job.timings
        table.add_row(
            study.name,
            study.description,
            slices,
            study.options.method,
            job.state.value if not job.error else f"{job.state.value}: {job.error[:60]}",
            f"{timings.get('compute_seconds', 0.0):.1f}",
            f"{100 * timings.get('overhead_fraction', 0.0):.1f} %",
            job.job_id,
        )
    console.print(table)
    plan = stack.plan
    console.print("where to look:")
    console.print(f"  Prefect UI (flow runs, task runs, artifacts): {plan.prefect_ui_url}/runs")
    console.print(f"  Prefect artifacts: {plan.prefect_ui_url}/artifacts")
    console.print(f"  Ray dashboard: {plan.ray_dashboard_url}")
    console.print(
        f"  results in S3: {settings.s3_url}/{settings.results_bucket}/"
        f"{flow.DEMO_TENANT}/jobs/<job>/ (keys from settings)"
    )
    for study in studies:
        job = jobs.get(study.name)
        if job is not None and job.state.value == "succeeded":
            console.print(f"  {study.name} viewer: {plan.api_url}/viewer/{job.job_id}")
            console.print(f"  {study.name} job (API): {plan.api_url}/v1/jobs/{job.job_id}")
    console.print(
        f"  the viewer and API ask for a key of tenant {flow.DEMO_TENANT!r}: "
        f"`mrdiff api-key create --tenant {flow.DEMO_TENANT}`"
    )
    if copied:
        console.print(f"  local copies: {copied[0].parents[1]}")
    console.print("the stack keeps running; stop it with `mrdiff down`")


def register(app: typer.Typer) -> None:
    """Add `up`, `down`, `status` and `demo`."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(demo)
