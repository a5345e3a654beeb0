"""Starting a training run from exported weights: fine-tuning a shipped prior or classifier.

A new run started with ``init_from`` takes a weights file in the format of
:mod:`services.recon.prior` (e.g. ``services/recon/weights/prior.pt``): the model and its EMA copy
both begin as the file's (EMA) weights, the architecture and noise schedule are the file's, the
optimiser is fresh and the step is 0. What the run was initialised from (the file's SHA-256,
name and step) is stored in every checkpoint under :data:`INIT_KEY` and carried into the weights
that :func:`services.recon.training.export_weights` writes, so a fine-tuned prior always says what
it was fine-tuned from. A run folder that already holds checkpoints resumes them; ``init_from``
is then accepted only when those checkpoints record the same weights. The classifier's runs
(:mod:`services.recon.classifier_training`) record their initial weights the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import nn

from services.recon.errors import InputError
from services.recon.prior import LoadedPrior, load_prior

INIT_KEY = "init_from"
"""Checkpoint and weights-file field: ``{"sha256", "name", "step"}`` of the initial weights."""


class InitialWeights(Protocol):
    """What a run records of the weights file it started from."""

    @property
    def sha256(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def model(self) -> nn.Module: ...


def read_init_weights(path: str | Path) -> LoadedPrior:
    """Load the weights a run starts from (on the CPU, checked like any prior weights file)."""
    return load_prior(path, device="cpu")


def init_record(weights: InitialWeights) -> dict[str, Any]:
    """What a run was initialised from, as its checkpoints and exported weights record it."""
    return {"sha256": weights.sha256, "name": weights.name, "step": weights.step}


def recorded_init_sha256(payload: dict[str, Any]) -> str | None:
    """SHA-256 of the weights a checkpoint's (or weights file's) run started from, if any."""
    record = payload.get(INIT_KEY)
    return str(record["sha256"]) if isinstance(record, dict) and "sha256" in record else None


def check_resumed_init(payload: dict[str, Any], init: InitialWeights, run_path: Path) -> None:
    """Refuse ``init_from`` on a run whose checkpoints did not start from those same weights."""
    recorded = recorded_init_sha256(payload)
    if recorded == init.sha256:
        return
    started = f"from other weights (sha256 {recorded[:12]})" if recorded else "from scratch"
    raise InputError(
        f"{run_path} already holds checkpoints of a run started {started}; --init-from only "
        "starts a new run (use a new run folder, or drop --init-from to resume)"
    )


ADDABLE_PREFIX = "mid_attention."
"""Parameters a run may add to its initial weights: the coarsest-scale self-attention block,
whose zero-initialised output leaves the network's function unchanged at the start."""


def start_from(init: InitialWeights, model: nn.Module, ema_model: nn.Module) -> None:
    """Set both the model and its EMA copy to the initial weights; parameters of an added
    attention block (:data:`ADDABLE_PREFIX`) keep their fresh initialisation."""
    missing, unexpected = model.load_state_dict(init.model.state_dict(), strict=False)
    if unexpected or any(not key.startswith(ADDABLE_PREFIX) for key in missing):
        raise InputError(
            f"{init.path.name} does not fit the run's network "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    ema_model.load_state_dict(model.state_dict())
