"""Prefect flow that trains the diffusion prior in resumable chunks.

Each chunk is one task that calls :func:`services.recon.training.train_prior` up to the chunk's
target step; the training code checkpoints at every target, so a retried or re-run task (or the
whole flow, run again with the same arguments) continues from the latest checkpoint instead of
starting over. The science stays in ``services.recon.training``; this module only orchestrates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from services.recon.training import (
    BankSelection,
    latest_checkpoint,
    read_checkpoint,
    train_prior,
)


def chunk_targets(done: int, steps: int, chunk_steps: int) -> list[int]:
    """Cumulative step targets after ``done`` steps, every ``chunk_steps``, ending at ``steps``."""
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    targets = list(range(done - done % chunk_steps + chunk_steps, steps, chunk_steps))
    return [*targets, steps] if done < steps else []


def completed_steps(run_dir: str | Path) -> int:
    """Steps saved in the run's latest checkpoint (0 for a new run)."""
    checkpoint = latest_checkpoint(run_dir)
    return int(read_checkpoint(checkpoint)["step"]) if checkpoint else 0


@task(name="train-prior-chunk", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE)
def train_chunk(
    bank_dir: str,
    run_dir: str,
    target_step: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Train up to ``target_step`` (resuming from the latest checkpoint) and summarise."""
    logger = get_run_logger()
    result = train_prior(bank_dir, run_dir, target_step, resume=True, **settings)
    logger.info(
        "prior at step %d, loss %s, %s s/step",
        result.step,
        f"{result.last_loss:.4f}" if result.last_loss is not None else "-",
        f"{result.seconds_per_step:.2f}" if result.seconds_per_step else "-",
    )
    return {
        "step": result.step,
        "last_loss": result.last_loss,
        "seconds_per_step": result.seconds_per_step,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }


@flow(name="train-prior")
def train_prior_flow(
    bank_dir: str,
    run_dir: str,
    steps: int,
    chunk_steps: int = 500,
    batch: int = 16,
    lr: float = 2e-4,
    ema: float = 0.999,
    seed: int = 0,
    threads: int | None = None,
    checkpoint_every: int = 250,
    workers: int = 0,
    init_from: str | None = None,
    snr_weight_cap: float = 1.0,
    pixel_mm: list[float] | None = None,
    geometry: str = "dihedral",
    attention: bool = False,
    zero_phase: bool = False,
) -> list[dict[str, Any]]:
    """Train the prior to ``steps`` total steps, one task per chunk of ``chunk_steps``.

    ``init_from``: exported prior weights a new run starts from (fine-tuning); later chunks
    resume the checkpoints, which record those weights' sha256. ``pixel_mm``, ``geometry`` and
    ``zero_phase`` select and augment the bank's slices
    (:class:`~services.recon.training.BankSelection`);
    ``attention`` gives a new run the coarsest-scale attention block.
    """
    settings: dict[str, Any] = {
        "batch": batch,
        "lr": lr,
        "ema": ema,
        "seed": seed,
        "threads": threads,
        "checkpoint_every": checkpoint_every,
        "workers": workers,
        "init_from": init_from,
        "snr_weight_cap": snr_weight_cap,
        "selection": BankSelection.from_options(pixel_mm, geometry, zero_phase),
        "attention": attention,
    }
    summaries = []
    for target in chunk_targets(completed_steps(run_dir), steps, chunk_steps):
        summaries.append(train_chunk(bank_dir, run_dir, target, settings))
    create_table_artifact(
        key="train-prior-chunks",
        table=summaries or [{"step": completed_steps(run_dir), "note": "already trained"}],
        description=f"Prior training chunks of {run_dir} (research use only, not for diagnosis)",
    )
    return summaries
