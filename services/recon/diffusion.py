"""Gaussian diffusion: noise schedule, forward noising and reverse (DDPM / DDIM) steps.

Follows the split of guided-diffusion's ``gaussian_diffusion.py``: this module knows nothing of
the denoiser network. Callers pass the network's epsilon prediction in, and anything that
conditions the reverse process (k-space data consistency, classifier guidance) is a function
applied by the caller between steps.

References:
- Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (DDPM step).
- Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (DDIM step, ``eta``).
- Nichol, Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021 (cosine
  schedule, respacing).

Timesteps run from 0 (least noise) to ``T - 1`` (pure noise). A previous timestep of ``-1``
means "clean image" (``alpha_bar = 1``). Every function works on any device and float dtype; the
schedule itself is kept in float64 and cast to the tensor it is applied to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

DEFAULT_TIMESTEPS = 1000
CLEAN = -1
"""Pseudo-timestep of the noise-free image (``alpha_bar = 1``)."""


def cosine_alpha_bars(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cumulative signal fractions ``alpha_bar_t`` of the cosine schedule (Nichol & Dhariwal).

    ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``, with each
    ``beta_t`` clipped to ``max_beta`` to avoid the singularity at ``t = T``.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(num_timesteps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def space_timesteps(
    num_timesteps: int, count: int, start: int | None = None, power: float = 1.0
) -> list[int]:
    """About ``count`` timesteps in ``[0, start]``, ascending, always including both ends.

    ``start`` defaults to ``num_timesteps - 1`` (pure noise); a smaller ``start`` gives the tail
    of a schedule for a warm start (Chung et al., "Come-Closer-Diffuse-Faster", CVPR 2022).
    ``power`` 1 spaces them evenly; above 1 puts more of them at low noise, ``t_i = start (i /
    (count - 1)) ** power`` (``power`` 2 is the "quadratic" respacing of DDIM, Song et al., ICLR
    2021); steps that round to the same timestep are merged. ``count > start`` gives every step.
    """
    last = num_timesteps - 1 if start is None else start
    if not 0 <= last < num_timesteps:
        raise ValueError(f"start must be in [0, {num_timesteps - 1}], got {last}")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if not power > 0:
        raise ValueError(f"power must be positive, got {power}")
    if count == 1:
        return [last]
    if count > last:
        return list(range(last + 1))
    spaced = {round(last * (i / (count - 1)) ** power) for i in range(count)}
    return sorted(spaced)


def _broadcast(values: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """``values[t]`` cast to ``like``'s dtype/device, shaped to broadcast over ``like``."""
    if isinstance(t, int):
        value = torch.ones((), dtype=torch.float64) if t == CLEAN else values[t]
        return value.to(device=like.device, dtype=like.dtype)
    index = t.to(device=values.device, dtype=torch.long)
    padded = torch.cat([values, torch.ones(1, dtype=values.dtype)])
    gathered = padded[torch.where(index == CLEAN, len(values), index)]
    shape = (-1,) + (1,) * (like.dim() - 1)
    return gathered.to(device=like.device, dtype=like.dtype).reshape(shape)


@dataclass(frozen=True)
class DiffusionSchedule:
    """A variance-preserving noise schedule given by its ``alpha_bar`` (float64, length T)."""

    alpha_bars: Tensor
    name: str = "cosine"

    @classmethod
    def cosine(cls, num_timesteps: int = DEFAULT_TIMESTEPS) -> DiffusionSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021)."""
        return cls(alpha_bars=cosine_alpha_bars(num_timesteps), name="cosine")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> DiffusionSchedule:
        """Rebuild from :meth:`to_dict`; only named schedules are accepted."""
        if spec.get("name") != "cosine":
            raise ValueError(f"unknown noise schedule {spec.get('name')!r}")
        return cls.cosine(int(spec["num_timesteps"]))

    def to_dict(self) -> dict[str, Any]:
        """Small description that is enough to rebuild the schedule."""
        return {"name": self.name, "num_timesteps": self.num_timesteps}

    @property
    def num_timesteps(self) -> int:
        return int(self.alpha_bars.shape[0])

    def alpha_bar(self, t: int | Tensor, like: Tensor) -> Tensor:
        """``alpha_bar_t`` broadcastable against ``like`` (``t = -1`` gives 1)."""
        return _broadcast(self.alpha_bars, t, like)

    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """Noise a clean image to level ``t``: ``sqrt(abar) x0 + sqrt(1 - abar) noise``."""
        abar = self.alpha_bar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """The clean image implied by ``eps``: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
        abar = self.alpha_bar(t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """Noise implied by a clean-image estimate (inverse of :meth:`predict_x0`)."""
        abar = self.alpha_bar(t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).clamp_min(1e-12).sqrt()

    def ddpm_step(
        self,
        x_t: Tensor,
        eps: Tensor,
        t: int,
        t_prev: int,
        noise: Tensor | None,
        clip_x0: float | None = None,
    ) -> Tensor:
        """Ancestral DDPM step ``x_t -> x_{t_prev}`` from the posterior ``q(x_prev | x_t, x0)``.

        Works for respaced schedules: the effective ``beta = 1 - abar_t / abar_prev``. The
        posterior variance is the "small" choice ``beta~ = (1 - abar_prev) / (1 - abar_t) beta``.
        ``noise`` may be ``None`` only when ``t_prev`` is :data:`CLEAN`.
        """
        abar_t = self.alpha_bar(t, x_t)
        abar_prev = self.alpha_bar(t_prev, x_t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        beta = 1 - abar_t / abar_prev
        mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (
            (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
        ) * x_t
        if t_prev == CLEAN:
            return mean
        if noise is None:
            raise ValueError("ddpm_step needs noise unless stepping to the clean image")
        variance = beta * (1 - abar_prev) / (1 - abar_t)
        return mean + variance.sqrt() * noise

    def ddim_step(
        self,
        x_t: Tensor,
        eps: Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: Tensor | None = None,
        clip_x0: float | None = None,
    ) -> Tensor:
        """DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12).

        ``eta = 0`` is deterministic, ``eta = 1`` matches DDPM's variance. ``noise`` is needed
        when ``eta > 0`` and ``t_prev`` is not :data:`CLEAN`.
        """
        abar_t = self.alpha_bar(t, x_t)
        abar_prev = self.alpha_bar(t_prev, x_t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = self.predict_eps(x_t, t, x0)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        direction = (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        x_prev = abar_prev.sqrt() * x0 + direction
        if eta > 0 and t_prev != CLEAN:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs noise")
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddim_reverse_step(self, x_t: Tensor, eps: Tensor, t: int, t_next: int) -> Tensor:
        """Deterministic DDIM encoding step ``x_t -> x_{t_next}`` (``t_next > t``).

        The inverse of :meth:`ddim_step` with ``eta = 0`` up to the change in ``eps``; used to
        encode an image to a noise level (Wolleb et al., MICCAI 2022). ``t`` may be :data:`CLEAN`.
        """
        abar_t = self.alpha_bar(t, x_t)
        abar_next = self.alpha_bar(t_next, x_t)
        x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        return abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """``(t, t_prev)`` pairs for a reverse pass over ascending ``timesteps``, ending at CLEAN."""
    descending = sorted(timesteps, reverse=True)
    return list(zip(descending, [*descending[1:], CLEAN], strict=True))
