"""`mrdiff bench denoising`: how well the prior predicts the clean image at each noise level.

Protocol. Validation-split slices (never trained on) at 128x128, each given the training bank's
smooth random phase (:func:`~services.recon.data.synthesis.with_smooth_phase`, seeded) and
scaled so its 99th-percentile magnitude is 1, are noised to timestep ``t`` with one seeded noise
draw; the prior's epsilon prediction gives the clean-image estimate
``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``, clipped to the sampler's data range
(:data:`~services.recon.sampler.CLIP_X0`). The table lists its mean squared error per pixel
and channel next to two baselines that ignore ``x_t``: zero and the mean image of the slices
themselves (an oracle of the data's average). Where the prior does worse than the mean image
it has not learned the global layout that an unconditional sample starts from (Ho et al.,
DDPM, NeurIPS 2020; the ill-conditioning of epsilon prediction at high noise is discussed by
Salimans & Ho, ICLR 2022).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from services.bench.recon import spread
from services.recon.data.splits import load_split
from services.recon.data.synthesis import with_smooth_phase
from services.recon.prior import LoadedPrior
from services.recon.sampler import CLIP_X0, prior_eps_function, to_channels
from services.recon.training import to_prior_intensity

DEFAULT_TIMESTEPS = (100, 400, 600, 800, 900, 950, 975, 990)


class DenoisingRow(NamedTuple):
    """Clean-image error of one prior (or baseline) at each timestep."""

    name: str
    mse_by_t: dict[int, float]


def validation_images(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` validation slices as complex 2-channel images in the prior's units."""
    slices = spread(load_split("validation"), count)
    images = [
        with_smooth_phase(item.image, np.random.default_rng([seed, index]))
        for index, item in enumerate(slices)
    ]
    stacked = torch.from_numpy(np.stack(images).astype(np.complex64))
    return to_prior_intensity(to_channels(stacked))


def denoising_errors(
    prior: LoadedPrior,
    x0: torch.Tensor,
    timesteps: Sequence[int],
    seed: int = 0,
    batch: int = 8,
) -> dict[int, float]:
    """Mean squared error of the prior's clipped clean-image estimate at each timestep."""
    eps_fn = prior_eps_function(prior)
    schedule = prior.schedule
    errors: dict[int, float] = {}
    with torch.inference_mode():
        for t in timesteps:
            generator = torch.Generator().manual_seed(seed * 100_003 + t)
            noise = torch.randn(x0.shape, generator=generator)
            total = 0.0
            for first in range(0, len(x0), batch):
                clean = x0[first : first + batch].to(prior.device)
                x_t = schedule.q_sample(clean, t, noise[first : first + batch].to(prior.device))
                estimate = schedule.predict_x0(x_t, t, eps_fn(x_t, t)).clamp(-CLIP_X0, CLIP_X0)
                total += float((estimate - clean).square().sum())
            errors[t] = total / x0.numel()
    return errors


def baseline_rows(x0: torch.Tensor, timesteps: Sequence[int]) -> list[DenoisingRow]:
    """Errors of predicting zero and of predicting the slices' own mean image."""
    zero = float(x0.square().mean())
    mean_image = float((x0 - x0.mean(dim=0, keepdim=True)).square().mean())
    return [
        DenoisingRow("baseline: zero image", dict.fromkeys(timesteps, zero)),
        DenoisingRow("baseline: mean image (oracle)", dict.fromkeys(timesteps, mean_image)),
    ]
