"""Anomaly maps: classifier-guided DDIM "healthy" reconstructions, and two baselines.

Wolleb et al., "Diffusion Models for Medical Anomaly Detection" (MICCAI 2022): encode the image
deterministically with DDIM (Song et al., ICLR 2021) to noise level ``L``, then decode with
DDIM while a noise-aware classifier pulls every step toward "healthy" (classifier guidance,
Dhariwal & Nichol, NeurIPS 2021: ``eps <- eps - s sqrt(1 - abar_t) grad log p(healthy | x_t)``).
What the decoder changes is what looked abnormal: ``anomaly_map = |input - healthy|`` (lightly
smoothed), and ``anomaly_mask`` is the map above its Otsu threshold inside the head.

With ``reference="unguided"`` the map is ``|unguided - healthy|`` instead: the same encoding
decoded once without and once with guidance, so what the prior cannot reproduce of an image it
has not seen (its own reconstruction error) cancels and only the classifier's change remains.

What guidance makes healthy (``guidance``): ``"slice"`` follows the slice's pooled lesion logit
(Wolleb et al.'s image-level classifier); ``"location"`` follows every cell of the classifier's
lesion-evidence map at once (``sum_c log p(cell c healthy)``), so each region that looks
lesioned is pulled in proportion to its own evidence rather than through the few cells that
dominate the pooled logit; ``"gated"`` follows the slice's pooled logit but weighs its gradient
pixel by pixel with the classifier's own lesion probability there (the evidence map's sigmoid,
upsampled, to the power :data:`GATE_POWER`), so the slice decision sets how hard the decoding
pulls and the evidence map where: healthy tissue that the gradient reaches through the network's
receptive field is left alone. ``"gated-input"`` reads that gate once, from the classifier's
evidence on the clean input (t = 0), instead of at every step's noisy ``x_t``.

Three methods share one interface (:class:`AnomalyDetector`):

- ``guided``: the method above;
- ``unguided``: the same encode/decode with ``s = 0`` (the diffusion model alone; its own ``L``);
- ``zscore``: global intensity z-score inside the head (``healthy`` is the head's mean there).

Magnitude images go to the prior as complex images with zero phase, scaled so the 99th
percentile magnitude is 1 (the prior's convention); outputs are in the input's units. The
encode/decode is deterministic (``eta = 0``), so the map depends on the image and the models
only; the seed is carried for the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch import Tensor

from services.recon.classifier import (
    LoadedClassifier,
    lesion_probability_map,
    log_prob_healthy,
    log_prob_healthy_everywhere,
    prior_input_from_magnitude,
)
from services.recon.diffusion import CLEAN, DiffusionSchedule, space_timesteps, step_pairs
from services.recon.errors import InputError
from services.recon.metrics import foreground_mask
from services.recon.precision import bf16_autocast
from services.recon.prior import LoadedPrior
from services.recon.unet import crop_to, pad_to_multiple

METHODS = ("guided", "unguided", "zscore")
REFERENCES = ("input", "unguided")
"""What the healthy version is compared with: the input (Wolleb et al.) or its unguided decoding."""
GUIDANCE_TARGETS = ("slice", "location", "gated", "gated-input")
"""What guidance makes healthy: the slice's pooled logit, every location of the evidence map, or
the slice's pooled logit with its pull gated by the evidence map (read at each step's ``x_t``,
or once from the clean input at t = 0, where the map localises best)."""
GATE_POWER = 8
"""Gated guidance weighs the gradient by the lesion probability to this power, so the pull
concentrates on the cells the classifier is surest of; chosen on validation among 1, 2, 4, 8
and 16 (BENCHMARKS.md, anomaly section, session 16)."""
RESEARCH_USE_ONLY = "research use only, not for diagnosis"
DEFAULTS_FILE = Path(__file__).resolve().parent / "weights" / "anomaly_defaults.json"
"""Knobs chosen on the validation split by ``mrdiff bench tune-anomaly``."""

EpsModel = Callable[[Tensor, Tensor], Tensor]
Guidance = Callable[[Tensor, int], Tensor]
"""``(x_t, t) -> grad_x log p(healthy | x_t, t)`` (already multiplied by the scale ``s``)."""


@dataclass(frozen=True)
class AnomalyConfig:
    """Knobs of the anomaly map; defaults are chosen on the validation split (bench anomaly)."""

    method: str = "guided"
    noise_level: int = 500
    steps: int = 25
    scale: float = 100.0
    smoothing_px: float = 1.0
    reference: str = "input"
    guidance: str = "slice"
    seed: int = 0
    bf16: bool = True

    def validated(self, num_timesteps: int | None = None) -> AnomalyConfig:
        """Return self, or raise :class:`InputError` naming the first bad knob."""
        if self.method not in METHODS:
            raise InputError(f"unknown anomaly method {self.method!r}; choose {', '.join(METHODS)}")
        if num_timesteps is not None and not 0 < self.noise_level < num_timesteps:
            raise InputError(
                f"noise level L must be in [1, {num_timesteps - 1}], got {self.noise_level}"
            )
        if self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if self.scale < 0:
            raise InputError(f"guidance scale s must be non-negative, got {self.scale}")
        if self.smoothing_px < 0:
            raise InputError(f"smoothing must be non-negative, got {self.smoothing_px}")
        if self.reference not in REFERENCES:
            raise InputError(
                f"unknown anomaly reference {self.reference!r}; choose {', '.join(REFERENCES)}"
            )
        if self.guidance not in GUIDANCE_TARGETS:
            raise InputError(
                f"unknown guidance target {self.guidance!r}; choose {', '.join(GUIDANCE_TARGETS)}"
            )
        if self.reference == "unguided" and self.method != "guided":
            raise InputError("reference 'unguided' is only for the guided method")
        return self


def load_defaults(path: Path = DEFAULTS_FILE) -> dict[str, Any]:
    """The file written by the validation tuning, or an empty dict before any tuning."""
    if not path.is_file():
        return {}
    payload: dict[str, Any] = json.loads(path.read_text())
    return payload


def default_config(
    method: str = "guided", seed: int = 0, path: Path = DEFAULTS_FILE, guidance: str | None = None
) -> AnomalyConfig:
    """``method``'s knobs as chosen on validation (built-in values before any tuning).

    With ``guidance``, the guided knobs validation chose for that guidance target (the best of
    its settings, even when the other target won), where the tuning searched it.
    """
    chosen = load_defaults(path).get("methods", {}).get(method, {})
    if guidance is not None and guidance != chosen.get("guidance", guidance):
        by_target = chosen.get("validation_by_guidance", {})
        chosen = {**by_target.get(guidance, {}), "guidance": guidance}
    known = {f.name for f in fields(AnomalyConfig)} - {"method", "seed"}
    values = {key: value for key, value in chosen.items() if key in known}
    return replace(AnomalyConfig(method=method), **values, method=method, seed=seed).validated()


def defaults_are_tuned(method: str, path: Path = DEFAULTS_FILE) -> bool:
    """True when ``method``'s defaults come from a validation run."""
    return method in load_defaults(path).get("methods", {})


class AnomalyResult(NamedTuple):
    """One slice's anomaly map, its healthy version and the Otsu mask (input's shape and units)."""

    anomaly_map: np.ndarray
    healthy: np.ndarray
    anomaly_mask: np.ndarray
    seconds: float


class Decoded(NamedTuple):
    """Magnitudes decoded from the DDIM encoding: (guided) healthy, and unguided when asked."""

    healthy: np.ndarray
    unguided: np.ndarray | None


def stack_results(results: list[AnomalyResult]) -> dict[str, np.ndarray]:
    """Per-slice results as ``(S, H, W)`` datasets named for an output file (never ``mask``)."""
    return {
        "anomaly_map": np.stack([r.anomaly_map for r in results]).astype(np.float32),
        "healthy": np.stack([r.healthy for r in results]).astype(np.float32),
        "anomaly_mask": np.stack([r.anomaly_mask for r in results]).astype(bool),
    }


def ddim_encode(
    eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: list[int]
) -> Tensor:
    """Deterministic DDIM encoding of ``x0`` up through ascending ``timesteps`` (to the last)."""
    x = x0
    previous = CLEAN
    for t in timesteps:
        eps = eps_model(x, _timestep_batch(max(previous, 0), x))
        x = schedule.ddim_reverse_step(x, eps, previous, t)
        previous = t
    return x


def ddim_decode(
    eps_model: EpsModel,
    schedule: DiffusionSchedule,
    x_t: Tensor,
    timesteps: list[int],
    guidance: Guidance | None = None,
) -> Tensor:
    """Deterministic DDIM decoding from the last of ``timesteps`` to the clean image.

    With ``guidance`` each noise prediction is shifted by ``-sqrt(1 - abar_t) * guidance`` (the
    score of the classifier, Dhariwal & Nichol 2021, Algorithm 2).
    """
    x = x_t
    for t, t_prev in step_pairs(timesteps):
        with torch.no_grad():
            eps = eps_model(x, _timestep_batch(t, x))
        if guidance is not None:
            eps = eps - (1 - schedule.alpha_bar(t, x)).sqrt() * guidance(x, t)
        x = schedule.ddim_step(x, eps, t, t_prev)
    return x


def _timestep_batch(t: int, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def otsu_mask(anomaly_map: np.ndarray, head: np.ndarray) -> np.ndarray:
    """``anomaly_map > Otsu threshold`` of its values inside ``head``; empty when flat."""
    values = anomaly_map[head]
    if values.size == 0 or float(values.max()) <= float(values.min()):
        return np.zeros(anomaly_map.shape, dtype=bool)
    return (anomaly_map > threshold_otsu(values)) & head


def zscore_map(magnitude: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global intensity outlier map: ``|m - mean| / std`` over the head (zero outside).

    Returns (map, healthy) where ``healthy`` is the head's mean inside the head and the input
    outside, so ``map = |input - healthy| / std``.
    """
    if not head.any():
        return np.zeros_like(magnitude), magnitude.copy()
    mean = float(magnitude[head].mean())
    std = max(float(magnitude[head].std()), 1e-12)
    healthy = np.where(head, mean, magnitude)
    return np.abs(magnitude - healthy) / std, healthy


class AnomalyDetector:
    """Anomaly maps of magnitude slices with one of :data:`METHODS` (see module docstring)."""

    def __init__(
        self,
        prior: LoadedPrior | None,
        classifier: LoadedClassifier | None,
        config: AnomalyConfig | None = None,
    ) -> None:
        self.config = config or AnomalyConfig()
        num_timesteps = prior.schedule.num_timesteps if prior is not None else None
        self.config.validated(num_timesteps)
        if self.config.method != "zscore" and prior is None:
            raise InputError(f"anomaly method {self.config.method!r} needs the diffusion prior")
        if self.config.method == "guided":
            if classifier is None:
                raise InputError("guided anomaly maps need the classifier weights")
            assert prior is not None
            if classifier.schedule.to_dict() != prior.schedule.to_dict():
                raise InputError("classifier and prior were trained with different noise schedules")
        self.prior = prior
        self.classifier = classifier

    def model_versions(self) -> dict[str, str]:
        """Name -> sha256 of the models this method uses."""
        versions: dict[str, str] = {}
        if self.config.method != "zscore" and self.prior is not None:
            versions[self.prior.name] = self.prior.sha256
        if self.config.method == "guided" and self.classifier is not None:
            versions[self.classifier.name] = self.classifier.sha256
        return versions

    def attributes(self) -> dict[str, object]:
        """What an output file records about how its maps were made."""
        cfg = self.config
        attrs: dict[str, object] = {
            "anomaly_method": cfg.method,
            "anomaly_seed": cfg.seed,
            "anomaly_smoothing_px": cfg.smoothing_px,
            "research_use_only": RESEARCH_USE_ONLY,
        }
        if cfg.method != "zscore":
            attrs.update(anomaly_L=cfg.noise_level, anomaly_steps=cfg.steps)
            attrs.update(anomaly_s=cfg.scale if cfg.method == "guided" else 0.0)
            attrs.update(anomaly_reference=cfg.reference)
        if cfg.method == "guided":
            attrs.update(anomaly_guidance=cfg.guidance)
        if self.prior is not None and cfg.method != "zscore":
            attrs.update(prior_model=self.prior.name, prior_sha256=self.prior.sha256)
        if self.classifier is not None and cfg.method == "guided":
            attrs.update(
                classifier_model=self.classifier.name, classifier_sha256=self.classifier.sha256
            )
        return attrs

    def detect(self, image: np.ndarray) -> AnomalyResult:
        """Anomaly map of one magnitude slice ``(H, W)``."""
        return self.detect_batch(np.asarray(image)[None])[0]

    def detect_batch(self, images: np.ndarray) -> list[AnomalyResult]:
        """Anomaly maps of same-sized magnitude slices ``(B, H, W)``, run in one batch."""
        started = time.perf_counter()
        magnitudes = _validated_magnitudes(images)
        heads = np.stack([foreground_mask(m) for m in magnitudes])
        if self.config.method == "zscore":
            pairs = [zscore_map(m, h) for m, h in zip(magnitudes, heads, strict=True)]
            maps = np.stack([p[0] for p in pairs])
            healthy = np.stack([p[1] for p in pairs])
        else:
            decoded = self.decode_batch(magnitudes)
            healthy = decoded.healthy
            reference = decoded.unguided if decoded.unguided is not None else magnitudes
            maps = np.abs(reference - healthy)
        if self.config.smoothing_px > 0:
            sigma = self.config.smoothing_px * magnitudes.shape[-1] / 128.0
            maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])
        seconds = (time.perf_counter() - started) / len(magnitudes)
        return [
            AnomalyResult(
                anomaly_map=maps[i].astype(np.float32),
                healthy=healthy[i].astype(np.float32),
                anomaly_mask=otsu_mask(maps[i], heads[i]),
                seconds=seconds,
            )
            for i in range(len(magnitudes))
        ]

    def decode_batch(self, magnitudes: np.ndarray) -> Decoded:
        """DDIM-encode magnitude slices ``(B, H, W)`` to L and decode them (guided if asked).

        The unguided decoding of the same encoding comes too when the reference is "unguided".
        """
        assert self.prior is not None
        prior, cfg = self.prior, self.config
        device = prior.device
        magnitude = torch.from_numpy(magnitudes.astype(np.float32)).to(device)
        x0, scale = prior_input_from_magnitude(magnitude)
        x0, offset = pad_to_multiple(x0, prior.config.size_multiple)
        timesteps = space_timesteps(prior.schedule.num_timesteps, cfg.steps + 1, cfg.noise_level)
        timesteps = [t for t in timesteps if t > 0] or [cfg.noise_level]
        eps_model = self._eps_model()
        guidance = self._guidance(x0) if cfg.method == "guided" and cfg.scale > 0 else None
        with torch.no_grad():
            x_t = ddim_encode(eps_model, prior.schedule, x0, timesteps)

        def magnitude_of(decoded: Tensor) -> np.ndarray:
            decoded = crop_to(decoded, offset, magnitudes.shape[-2:])
            healthy = decoded.float().pow(2).sum(dim=1).sqrt() * scale[:, None, None]
            return healthy.detach().cpu().numpy()

        healthy = magnitude_of(ddim_decode(eps_model, prior.schedule, x_t, timesteps, guidance))
        unguided = None
        if cfg.reference == "unguided":
            unguided = magnitude_of(ddim_decode(eps_model, prior.schedule, x_t, timesteps))
        return Decoded(healthy, unguided)

    def _eps_model(self) -> EpsModel:
        assert self.prior is not None
        model = self.prior.model

        def eps(x: Tensor, t: Tensor) -> Tensor:
            with bf16_autocast(x.device, self.config.bf16):
                out = model(x.contiguous(memory_format=torch.channels_last), t)
            return out.float()

        return eps

    def _input_gate(self, x0: Tensor) -> Tensor:
        """The classifier's lesion probability per pixel on the clean input, to the gate's power."""
        assert self.classifier is not None
        with torch.no_grad(), bf16_autocast(x0.device, self.config.bf16):
            evidence = self.classifier.model.evidence(x0, _timestep_batch(0, x0))
        return lesion_probability_map(evidence, (x0.shape[-2], x0.shape[-1])) ** GATE_POWER

    def _guidance(self, x0: Tensor) -> Guidance:
        """The scaled classifier score for decoding the clean input ``x0`` (B, 2, H, W)."""
        assert self.classifier is not None
        classifier = self.classifier.model
        scale, target = self.config.scale, self.config.guidance
        input_gate = self._input_gate(x0) if target == "gated-input" else None

        def grad_log_healthy(x: Tensor, t: int) -> Tensor:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                with bf16_autocast(x.device, self.config.bf16):
                    evidence = classifier.evidence(x_in, _timestep_batch(t, x))
                    if target == "location":
                        log_p = log_prob_healthy_everywhere(evidence)
                    else:
                        log_p = log_prob_healthy(classifier, evidence)
                (gradient,) = torch.autograd.grad(log_p.sum(), x_in)
            if input_gate is not None:
                gradient = gradient * input_gate
            elif target == "gated":
                gate = lesion_probability_map(evidence.detach(), (x.shape[-2], x.shape[-1]))
                gradient = gradient * gate**GATE_POWER
            return scale * gradient.float()

        return grad_log_healthy


def _validated_magnitudes(images: np.ndarray) -> np.ndarray:
    """Float64 magnitudes ``(B, H, W)`` or :class:`InputError` naming what is wrong."""
    array = np.asarray(images)
    if array.ndim != 3:
        raise InputError(f"anomaly maps take (H, W) slices, got shape {array.shape[1:]}")
    if min(array.shape[-2:]) < 16:
        raise InputError(f"slice {array.shape[-2:]} is too small for an anomaly map (min 16)")
    magnitudes = np.abs(array).astype(np.float64)
    if not np.isfinite(magnitudes).all():
        raise InputError("image contains NaN or infinite values")
    if not (magnitudes.reshape(len(magnitudes), -1).max(axis=1) > 0).all():
        raise InputError("image is all zeros")
    return magnitudes
