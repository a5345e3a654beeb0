"""Prefect flow that trains the anomaly classifier in resumable chunks, then exports it.

Mirrors :mod:`pipelines.train_flow`: one task per chunk of steps calls
:func:`services.recon.classifier_training.train_classifier`, which checkpoints at each target,
so a retried task or a re-run flow continues from the latest checkpoint. The last task writes
the EMA weights (with ``.sha256``) when ``export_to`` is given. No science lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.train_flow import chunk_targets
from services.recon.classifier_training import (
    DENSE_WEIGHT,
    export_classifier,
    read_classifier_checkpoint,
    train_classifier,
)
from services.recon.training import BankSelection, latest_checkpoint


def classifier_steps_done(run_dir: str | Path) -> int:
    """Steps saved in the classifier run's latest checkpoint (0 for a new run)."""
    checkpoint = latest_checkpoint(run_dir)
    return int(read_classifier_checkpoint(checkpoint)["step"]) if checkpoint else 0


@task(name="train-classifier-chunk", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE)
def train_classifier_chunk(
    bank_dir: str, run_dir: str, target_step: int, settings: dict[str, Any]
) -> dict[str, Any]:
    """Train up to ``target_step`` (resuming from the latest checkpoint) and summarise."""
    result = train_classifier(bank_dir, run_dir, target_step, resume=True, **settings)
    get_run_logger().info(
        "classifier at step %d, loss %s",
        result.step,
        f"{result.last_loss:.4f}" if result.last_loss is not None else "-",
    )
    return {
        "step": result.step,
        "last_loss": result.last_loss,
        "seconds_per_step": result.seconds_per_step,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }


@task(name="export-classifier", retries=1, cache_policy=NO_CACHE)
def export_classifier_task(run_dir: str, out_path: str) -> dict[str, Any]:
    """Write the EMA weights of the run's latest checkpoint with a ``.sha256`` beside them."""
    exported = export_classifier(run_dir, out_path)
    return {
        "path": str(exported.path),
        "sha256": exported.sha256,
        "step": exported.step,
        "size_bytes": exported.size_bytes,
    }


@flow(name="train-classifier")
def train_classifier_flow(
    bank_dir: str,
    run_dir: str = "runs/classifier",
    steps: int = 4000,
    chunk_steps: int = 500,
    batch: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int = 1,
    checkpoint_every: int = 200,
    workers: int = 0,
    crop: int | None = 64,
    dense_weight: float = DENSE_WEIGHT,
    pixel_mm: list[float] | None = None,
    geometry: str = "dihedral",
    init_from: str | None = None,
    export_to: str | None = None,
    appearance: float = 0.0,
    tissue_blobs: float = 0.0,
) -> list[dict[str, Any]]:
    """Train the classifier to ``steps`` total steps, one task per chunk; optionally export.

    ``dense_weight``, ``pixel_mm``, ``geometry``, ``appearance``, ``tissue_blobs`` and
    ``init_from`` (exported classifier weights a new run starts from; later chunks resume the
    checkpoints, which record their sha256) are those of ``mrdiff train classifier``.
    """
    settings: dict[str, Any] = {
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "checkpoint_every": checkpoint_every,
        "workers": workers,
        "crop": crop,
        "dense_weight": dense_weight,
        "selection": BankSelection.from_options(pixel_mm, geometry),
        "init_from": init_from,
        "appearance": appearance,
        "tissue_blobs": tissue_blobs,
    }
    summaries = [
        train_classifier_chunk(bank_dir, run_dir, target, settings)
        for target in chunk_targets(classifier_steps_done(run_dir), steps, chunk_steps)
    ]
    table: list[dict[str, Any]] = summaries or [
        {"step": classifier_steps_done(run_dir), "note": "already trained"}
    ]
    if export_to is not None:
        table = [*table, export_classifier_task(run_dir, export_to)]
    create_table_artifact(
        key="train-classifier-chunks",
        table=table,
        description=f"Classifier training of {run_dir} (research use only, not for diagnosis)",
    )
    return summaries
