"""Noise-aware healthy-vs-lesion classifier: the encoder half of the prior's UNet.

Classifier guidance (Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis",
NeurIPS 2021) needs ``p(y | x_t, t)`` at every noise level; Wolleb et al. ("Diffusion Models for
Medical Anomaly Detection", MICCAI 2022) use guided-diffusion's ``EncoderUNetModel`` for it, a
half-UNet with the timestep embedding in each residual block. This one reuses the prior's
residual block and embedding (:mod:`services.recon.unet`) and ends in a per-location lesion
evidence map pooled by log-sum-exp, a smooth maximum: one small lesion anywhere is enough to
call a slice diseased, and the gradient of ``log p(healthy)`` lands where the evidence is
(training also supervises the evidence map with the exact lesion masks, see
:mod:`services.recon.classifier_training`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError
from services.recon.prior import (
    malformed_as_input_error,
    p99_scale,
    pick_device,
    read_weights_file,
)
from services.recon.unet import (
    ResidualBlock,
    config_from_dict,
    config_to_dict,
    timestep_embedding,
)

HEALTHY = 0
LESION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`NoiseAwareClassifier`; saved in checkpoints and exported weights."""

    in_channels: int = 2
    channels: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_level: int = 1
    norm_groups: int = 8
    dropout: float = 0.0
    time_embedding_dim: int = 128
    pool_sharpness: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ClassifierConfig:
        return config_from_dict(cls, spec, "classifier config")


class NoiseAwareClassifier(nn.Module):
    """``logits = classifier(x_t, t)``, shape ``(B, 2)``: column 0 healthy, column 1 lesion.

    Input is the prior's representation (2 channels, real/imaginary, 99th percentile magnitude
    about 1) noised to timestep ``t``; any H and W work (strided convolutions round up).
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        cfg = self.config
        base = cfg.channels[0]
        time_dim = cfg.time_embedding_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        current = base
        for level, width in enumerate(cfg.channels):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResidualBlock(current, width, time_dim, cfg.norm_groups, cfg.dropout))
                current = width
            self.levels.append(blocks)
            if level < len(cfg.channels) - 1:
                self.downsamples.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
        self.middle = ResidualBlock(current, current, time_dim, cfg.norm_groups, cfg.dropout)
        self.head_norm = nn.GroupNorm(cfg.norm_groups, current)
        self.evidence_head = nn.Conv2d(current, 1, 1)

    def evidence(self, x: Tensor, t: Tensor) -> Tensor:
        """Per-location lesion evidence ``(B, 1, h, w)`` at the coarsest scale."""
        time = self.time_mlp(timestep_embedding(t, self.config.channels[0]))
        h = self.stem(x)
        for level, blocks in enumerate(self.levels):
            for block in cast(nn.ModuleList, blocks):
                h = block(h, time)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        h = self.middle(h, time)
        return self.evidence_head(F.silu(self.head_norm(h)))

    def pool(self, evidence: Tensor) -> Tensor:
        """Image logit ``(B,)`` from an evidence map: log-mean-exp with sharpness ``r``."""
        flat = evidence.flatten(1).float()
        r = self.config.pool_sharpness
        return (torch.logsumexp(r * flat, dim=1) - math.log(flat.shape[1])) / r

    def lesion_logit(self, x: Tensor, t: Tensor) -> Tensor:
        """``log p(lesion) - log p(healthy)``, shape ``(B,)``: pooled evidence."""
        return self.pool(self.evidence(x, t))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        logit = self.lesion_logit(x, t)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def classifier_to_device(
    model: NoiseAwareClassifier, device: torch.device | str
) -> NoiseAwareClassifier:
    """Move ``model`` to ``device`` with channels_last weights (faster convolutions on CPU)."""
    moved: NoiseAwareClassifier = cast(Any, model).to(
        device=device, memory_format=torch.channels_last
    )
    return moved


def prior_input_from_magnitude(magnitude: Tensor) -> tuple[Tensor, Tensor]:
    """Magnitudes ``(B, H, W)`` as zero-phase complex images in the prior's intensity space.

    Returns ``(x0, scale)``: ``x0`` is ``(B, 2, H, W)`` with the real channel ``magnitude /
    scale`` and a zero imaginary channel; ``scale`` ``(B,)`` is each image's 99th percentile.
    """
    scale = p99_scale(magnitude)
    real = magnitude.float() / scale[:, None, None]
    return torch.stack([real, torch.zeros_like(real)], dim=1), scale


def log_prob_healthy(classifier: NoiseAwareClassifier, evidence: Tensor) -> Tensor:
    """``log p(healthy | x_t, t)`` per image, shape ``(B,)``, from its evidence map."""
    return F.logsigmoid(-classifier.pool(evidence))


def log_prob_healthy_everywhere(evidence: Tensor) -> Tensor:
    """``sum_c log p(location c healthy | x_t, t)`` per image, shape ``(B,)``.

    Each cell of the evidence map is a per-location classifier (training supervises it with the
    lesion masks); taken as independent, their product is "every location is healthy". Its
    gradient is the sum of every cell's pull weighted by that cell's lesion probability, where
    the pooled slice logit pulls mostly at its few highest cells.
    """
    return F.logsigmoid(-evidence.float()).flatten(1).sum(dim=1)


def lesion_probability_map(evidence: Tensor, size: tuple[int, int]) -> Tensor:
    """Each pixel's lesion probability ``(B, 1, H, W)``: the evidence map's sigmoid, upsampled
    bilinearly from the classifier's coarsest scale to ``size``."""
    probability = torch.sigmoid(evidence.float())
    return F.interpolate(probability, size=size, mode="bilinear", align_corners=False)


# --- weights -------------------------------------------------------------------------------

WEIGHTS_FORMAT = "mrdiff-classifier"
WEIGHTS_FORMAT_VERSION = 1
INPUT_CONVENTION = "zero-phase-magnitude-p99"
"""Trained on magnitudes with zero phase, scaled so the 99th percentile is 1 (the prior's space)."""
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "classifier.pt"
APPEARANCE_KEY = "appearance_probability"
"""Checkpoint and weights key: how often a training pair got a random scanner appearance."""
TISSUE_BLOBS_KEY = "tissue_blobs_probability"
"""Checkpoint and weights key: how often a training pair got healthy look-alike blobs."""


@dataclass(frozen=True)
class LoadedClassifier:
    """A ready-to-use classifier: network in eval mode, its noise schedule and provenance."""

    model: NoiseAwareClassifier
    config: ClassifierConfig
    schedule: DiffusionSchedule
    sha256: str
    name: str
    path: Path
    step: int
    training: str = "not recorded"
    """The run's last slice selection and evidence-map loss weight, as the file records them."""


def load_classifier(
    path: str | Path | None = None, device: str | torch.device | None = None
) -> LoadedClassifier:
    """Load classifier weights (default: the shipped ``services/recon/weights/classifier.pt``).

    File format (``torch.load(weights_only=True)``)::

        {"format": "mrdiff-classifier", "format_version": 1, "name": str,
         "classifier_config": ClassifierConfig.to_dict(), "schedule": {...},
         "input": "zero-phase-magnitude-p99", "state_dict": {...}, "step": int,
         "research_use_only": "research use only, not for diagnosis"}

    with ``<file>.sha256`` beside it (checked when present). Raises :class:`InputError` for a
    missing, malformed or mismatching file; never touches the network.
    """
    hint = " (train one: `mrdiff train-classifier`)"
    weights_path, sha256, payload = read_weights_file(
        path, DEFAULT_WEIGHTS, "classifier", WEIGHTS_FORMAT, hint
    )
    if payload.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise InputError(f"classifier weights {weights_path}: unsupported format_version")
    if payload.get("input") != INPUT_CONVENTION:
        raise InputError(f"classifier weights {weights_path}: unsupported input convention")
    with malformed_as_input_error("classifier", weights_path):
        config = ClassifierConfig.from_dict(dict(payload["classifier_config"]))
        schedule = DiffusionSchedule.from_dict(dict(payload["schedule"]))
        model = NoiseAwareClassifier(config)
        model.load_state_dict(payload["state_dict"])
    model = classifier_to_device(model, pick_device(device)).eval()
    model.requires_grad_(False)
    return LoadedClassifier(
        model=model,
        config=config,
        schedule=schedule,
        sha256=sha256,
        name=str(payload.get("name") or weights_path.stem),
        path=weights_path,
        step=int(payload.get("step", 0)),
        training=recorded_training(payload),
    )


def recorded_training(payload: dict[str, Any]) -> str:
    """Slice selection, evidence-map loss weight and the randomisations recorded in
    classifier weights."""
    selection = payload.get("training_data") or "not recorded (every slice, dihedral)"
    dense = payload.get("dense_weight", "not recorded (1.0)")
    appearance = payload.get(APPEARANCE_KEY, 0.0)
    blobs = payload.get(TISSUE_BLOBS_KEY, 0.0)
    return (
        f"slices {selection}, evidence-map loss weight {dense}, "
        f"random scanner appearance on {appearance:.0%} of pairs, "
        f"healthy look-alike blobs on {blobs:.0%}"
    )
