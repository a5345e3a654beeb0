"""Loading the diffusion prior's weights, and the intensity convention the prior works in.

Weights file format (``.pt``, read with ``torch.load(weights_only=True)``, so it holds only
tensors and plain Python values) — the same for the shipped ``services/recon/weights/prior.pt``
and for weights users bring themselves (e.g. trained on fastMRI)::

    {
        "format": "mrdiff-prior",          # exactly this string
        "format_version": 1,
        "name": "mrdiff-prior-mni-v1",     # free text, shown in outputs
        "unet_config": {...},              # UNetConfig.to_dict()
        "schedule": {"name": "cosine", "num_timesteps": 1000},
        "state_dict": {...},               # UNet weights (the EMA weights of a training run)
        "intensity": "p99",                # images scaled so their 99th percentile magnitude is 1
        "step": 12345,                     # training steps (informational)
        "research_use_only": "research use only, not for diagnosis",
    }

:func:`services.recon.training.export_weights` writes such a file from a training run, with
``<file>.sha256`` beside it (``sha256sum`` format). When that sidecar exists the loader checks
it. Loading never touches the network.

Intensity convention: the prior was trained on complex images scaled so that the 99th
percentile of the magnitude is 1 (:func:`p99_scale`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError
from services.recon.unet import UNet, UNetConfig, to_device

WEIGHTS_FORMAT = "mrdiff-prior"
WEIGHTS_FORMAT_VERSION = 1
INTENSITY_CONVENTION = "p99"
INTENSITY_PERCENTILE = 0.99
RESEARCH_USE_ONLY = "research use only, not for diagnosis"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "prior.pt"


@dataclass(frozen=True)
class LoadedPrior:
    """A ready-to-use prior: the network in eval mode (channels_last) and what it needs."""

    model: UNet
    config: UNetConfig
    schedule: DiffusionSchedule
    sha256: str
    name: str
    path: Path
    step: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def p99_scale(magnitude: Tensor, floor: float = 1e-12) -> Tensor:
    """99th percentile of ``magnitude`` over the last two axes (shape: leading axes).

    Dividing an image by this puts it in the prior's intensity convention.
    """
    flat = magnitude.detach().float().flatten(start_dim=-2)
    return torch.quantile(flat, INTENSITY_PERCENTILE, dim=-1).clamp_min(floor)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _require(payload: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = payload.get(key)
    if not isinstance(value, kind):
        raise InputError(f"prior weights {path}: missing or invalid field {key!r}")
    return value


def load_prior(
    path: str | Path | None = None, device: str | torch.device | None = None
) -> LoadedPrior:
    """Load prior weights (default: the shipped ``services/recon/weights/prior.pt``).

    Raises :class:`InputError` when the file is missing, is not a weights file in the format
    described in this module's docstring, or does not match its ``.sha256`` sidecar.
    """
    weights_path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not weights_path.is_file():
        hint = " (train: `mrdiff train prior`, then `mrdiff train export`)" if path is None else ""
        raise InputError(f"prior weights not found: {weights_path}{hint}")
    sha256 = sha256_of(weights_path)
    sidecar = weights_path.with_name(weights_path.name + ".sha256")
    if sidecar.is_file():
        recorded = sidecar.read_text().split()
        if not recorded or recorded[0].lower() != sha256:
            raise InputError(f"prior weights {weights_path} do not match {sidecar.name}")
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"prior weights {weights_path} are unreadable: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise InputError(f"{weights_path} is not an mrdiff prior weights file")
    if payload.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise InputError(
            f"prior weights {weights_path}: unsupported format_version "
            f"{payload.get('format_version')!r}"
        )
    if payload.get("intensity", INTENSITY_CONVENTION) != INTENSITY_CONVENTION:
        raise InputError(f"prior weights {weights_path}: unsupported intensity convention")
    try:
        config = UNetConfig.from_dict(_require(payload, "unet_config", dict, weights_path))
        schedule = DiffusionSchedule.from_dict(_require(payload, "schedule", dict, weights_path))
        model = UNet(config)
        model.load_state_dict(_require(payload, "state_dict", dict, weights_path))
    except InputError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"prior weights {weights_path} are malformed: {first_line}") from error
    target = pick_device(device)
    model = to_device(model, target).eval()
    model.requires_grad_(False)
    name = payload.get("name")
    return LoadedPrior(
        model=model,
        config=config,
        schedule=schedule,
        sha256=sha256,
        name=str(name) if name else weights_path.stem,
        path=weights_path,
        step=int(payload.get("step", 0)),
    )
