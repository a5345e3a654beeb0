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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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


class WeightsFile(NamedTuple):
    """A weights file read and checked by :func:`read_weights_file`."""

    path: Path
    sha256: str
    payload: dict[str, Any]


def read_weights_file(
    path: str | Path | None, default: Path, kind: str, file_format: str, hint: str
) -> WeightsFile:
    """Read the ``kind`` ("prior", "classifier") weights at ``path`` (None: ``default``).

    The file must exist (``hint`` says how to make the default one), match its ``.sha256``
    sidecar when there is one, load with ``torch.load(weights_only=True)`` and be a dict whose
    ``"format"`` is ``file_format``; otherwise :class:`InputError`.
    """
    weights_path = Path(path) if path is not None else default
    if not weights_path.is_file():
        raise InputError(f"{kind} weights not found: {weights_path}{hint if path is None else ''}")
    sha256 = sha256_of(weights_path)
    sidecar = weights_path.with_name(weights_path.name + ".sha256")
    if sidecar.is_file():
        recorded = sidecar.read_text().split()
        if not recorded or recorded[0].lower() != sha256:
            raise InputError(f"{kind} weights {weights_path} do not match {sidecar.name}")
    try:
        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"{kind} weights {weights_path} are unreadable: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise InputError(f"{weights_path} is not an mrdiff {kind} weights file")
    return WeightsFile(weights_path, sha256, payload)


@contextmanager
def malformed_as_input_error(kind: str, path: Path) -> Iterator[None]:
    """Turn errors of building a network from a weights file into one-line InputErrors."""
    try:
        yield
    except InputError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        first_line = (str(error).strip().splitlines() or [repr(error)])[0]
        raise InputError(f"{kind} weights {path} are malformed: {first_line}") from error


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
    hint = " (train: `mrdiff train prior`, then `mrdiff train export`)"
    weights_path, sha256, payload = read_weights_file(
        path, DEFAULT_WEIGHTS, "prior", WEIGHTS_FORMAT, hint
    )
    if payload.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise InputError(
            f"prior weights {weights_path}: unsupported format_version "
            f"{payload.get('format_version')!r}"
        )
    if payload.get("intensity", INTENSITY_CONVENTION) != INTENSITY_CONVENTION:
        raise InputError(f"prior weights {weights_path}: unsupported intensity convention")
    with malformed_as_input_error("prior", weights_path):
        config = UNetConfig.from_dict(_require(payload, "unet_config", dict, weights_path))
        schedule = DiffusionSchedule.from_dict(_require(payload, "schedule", dict, weights_path))
        model = UNet(config)
        model.load_state_dict(_require(payload, "state_dict", dict, weights_path))
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
