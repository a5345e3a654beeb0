"""k-space-guided coarse-to-fine diffusion sampling with pixel-variance uncertainty.

After Peng et al., "Towards performant and reliable undersampled MR reconstruction via
diffusion model sampling" (DiffuseRecon, MICCAI 2022):

1. Coarse stage: ``N`` samples in one batch run the reverse diffusion on a respaced schedule.
   After every step the measured k-space, noised to the new level
   (``sqrt(abar) y + sqrt(1 - abar) F S eps``), replaces the samples' k-space on the sampled
   locations (single coil), or enters through the SENSE operator with ESPIRiT maps
   (``x <- x - S^H F^H M (M F S x - y_t)``, multi-coil).
2. The pixel variance of the magnitude across the ``N`` samples is the uncertainty map, pooled
   over a small Gaussian neighbourhood (:data:`VARIANCE_SMOOTHING_PX`) because a variance from 8
   samples is itself a noisy estimate.
3. Fine stage: the mean of the samples is refined by a few deterministic (DDIM, eta 0) steps at
   the low-noise end of the full schedule, with the clean measurements.

Measurement noise (:mod:`services.recon.noise`, after DDNM+): its level is estimated from the
corners of k-space, the noise added to the injected measurements is reduced by it, and below the
level where the diffusion noise falls under it the measurements enter with a weight < 1, so
the prior removes the measurement noise instead of copying it into the output. ``noise_std = 0``
restores DiffuseRecon's exact replacement (output exactly consistent with the measurements).

An alternative (``consistency="estimate"``, after DDNM, Wang et al., ICLR 2023) makes each
step's clean-image estimate consistent with the clean measurements instead; it measured 0.1 dB
below DiffuseRecon's fusion on the validation split (BENCHMARKS.md, session 17), so fusion stays.

Warm start (Chung et al., "Come-Closer-Diffuse-Faster", CVPR 2022): the coarse stage may start
from an initial estimate noised to ``t0`` and run only the respaced steps below it.

The network is reached only through :class:`~services.recon.prior.LoadedPrior`; data
consistency is a function applied between the steps of :mod:`services.recon.diffusion`.
Images are scaled into the prior's intensity convention (99th percentile magnitude of the
zero-filled image = 1) and back, so outputs are in the units of the zero-filled input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from services.recon import physics
from services.recon.diffusion import CLEAN, DiffusionSchedule, space_timesteps, step_pairs
from services.recon.errors import InputError
from services.recon.noise import added_noise_std, data_weight, estimate_noise_std
from services.recon.precision import bf16_autocast
from services.recon.prior import LoadedPrior, p99_scale
from services.recon.unet import crop_to, pad_to_multiple

DEFAULT_WARM_START = 400
DEFAULT_COARSE_STEPS = 45
"""Coarse respaced steps: 45 cost 0.03 dB against 50 on the validation split (1-D random 4x,
0.01 dB at 8x) and keep a 128x128 slice with 8 samples under 15 s on 2 cores (BENCHMARKS.md)."""
DEFAULT_REFINE_STEPS = 20
COARSE_SPACING_POWER = 1.5
"""Coarse timesteps ``t_i = T (i / n) ** 1.5``: denser at low noise than even spacing, where
the image's detail forms. Same number of network calls; on the validation split (1-D random 4x)
+0.10 dB on 4 slices and +0.11 dB on 8 others against even spacing, +0.01 dB at 8x (power 2:
+0.07 / -0.03 dB); on the 6 slices of `mrdiff bench recon --split validation` +0.03 / -0.02 dB
(BENCHMARKS.md, session 6)."""
UNCONDITIONAL_START_STEP = 900
"""Timestep unconditional sampling starts at, from pure noise. Above it the prior's clean-image
estimate is worse than a blank image (`mrdiff bench denoising`: an epsilon model's estimate
``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` is ill-conditioned as abar -> 0), and starting at
T - 1 let those estimates set the layout of the samples (bright blobs filling the field of
view). At 900 the noised image holds only ``sqrt(abar) = 0.15`` of the signal, so pure noise
is a close start. Reconstruction keeps T - 1: the measured k-space, injected from the first
step, corrects the layout, and starting at 900 cost 0.02 / 0.06 dB on validation (1-D 4x / 8x,
BENCHMARKS.md)."""
CLIP_X0 = 2.0
"""Bound on the real and imaginary parts of every clean-image estimate, in the prior's units:
the data range (the largest |real| or |imaginary| value of a training slice is at most 1.72
in 99 % of them). At high noise an epsilon model's clean-image estimate is ill-conditioned;
clipping at 5 left unconditional samples as bright blobs filling the field of view, at 2
they keep a dark background. Reconstruction PSNR on validation changed by under 0.01 dB."""
VARIANCE_SMOOTHING_PX = 2.0
"""Gaussian sigma (pixels) pooling the per-pixel variance of the samples. A variance from 8
samples has 7 degrees of freedom (about 27 % relative error in the std); pooling neighbours
whose uncertainty is alike lowers that. Chosen on the validation split (6 slices): Spearman(std,
|error|) in the head rose from 0.351 / 0.341 / 0.239 (raw) to 0.421 / 0.399 / 0.307 at 2 px
(1-D 4x, 1-D 8x, Poisson 4x), with AUSE falling; 3 px added under 0.01, while blurring the
map's detail (BENCHMARKS.md, session 6). 0 gives the raw per-pixel variance."""
MAX_VARIANCE_SMOOTHING_PX = 16.0
CONSISTENCY_MODES = ("noised", "estimate")
"""Where the coarse stage meets the measurements: ``noised`` replaces the k-space of each
``x_t`` by the measurements noised to its level (DiffuseRecon); ``estimate`` makes each step's
clean-image estimate consistent with the clean measurements before the step (DDNM)."""
TRAINED_PIXEL_MM = (0.7, 2.5)
SENSIBLE_MATRIX = (64, 512)
CENTRE_BLOCK_FRACTION = 0.08
MIN_CENTRE_SAMPLED = 0.5
PARTIAL_FOURIER_RATIO = 0.8

EpsFunction = Callable[[Tensor, int], Tensor]
"""``eps_fn(x, t)``: the prior's noise prediction for a batch ``x`` (B, 2, H, W) at step ``t``."""


@dataclass(frozen=True)
class SamplerConfig:
    """Knobs of the sampler; the defaults are the ones reported in MODEL_CARD.md.

    ``final_dc_iterations`` (multi-coil only) are the CG steps of the data consistency after
    the last step of each stage; every other step takes one gradient step (DiffuseRecon).
    ``spacing_power`` shapes the coarse respacing (:data:`COARSE_SPACING_POWER`; 1 = even).
    ``start_step`` is the timestep a cold start begins at (None: the schedule's last, T - 1;
    see :data:`UNCONDITIONAL_START_STEP`).
    ``clip_x0`` bounds the real and imaginary parts of each step's clean-image estimate in the
    prior's units (99th percentile magnitude = 1), as guided-diffusion's ``clip_denoised``.
    ``noise_std`` is the measurement noise per real/imaginary channel in the units of the input
    k-space: None estimates it (:func:`~services.recon.noise.estimate_noise_std`), 0 means
    noiseless measurements (exact replacement, DiffuseRecon).
    """

    samples: int = 8
    steps: int = DEFAULT_COARSE_STEPS
    refine_steps: int = DEFAULT_REFINE_STEPS
    warm_start: int | None = None
    full_schedule: bool = False
    start_step: int | None = None
    spacing_power: float = COARSE_SPACING_POWER
    eta: float = 1.0
    clip_x0: float | None = CLIP_X0
    noise_std: float | None = 0.0
    variance_smoothing_px: float = VARIANCE_SMOOTHING_PX
    final_dc_iterations: int = 10
    consistency: str = "noised"
    keep_samples: bool = False
    bf16: bool = True

    def validated(self, num_timesteps: int) -> SamplerConfig:
        if self.samples < 1:
            raise InputError(f"samples must be >= 1, got {self.samples}")
        if not 1 <= self.steps <= num_timesteps:
            raise InputError(f"steps must be in [1, {num_timesteps}], got {self.steps}")
        if not 0 <= self.refine_steps <= num_timesteps:
            raise InputError(f"refine_steps must be in [0, {num_timesteps}]")
        if self.start_step is not None and not 0 <= self.start_step < num_timesteps:
            raise InputError(f"start_step must be in [0, {num_timesteps - 1}]")
        if self.warm_start is not None and not 0 <= self.warm_start < num_timesteps:
            raise InputError(f"warm_start must be in [0, {num_timesteps - 1}]")
        if self.consistency not in CONSISTENCY_MODES:
            choices = ", ".join(CONSISTENCY_MODES)
            raise InputError(f"consistency must be one of {choices}, got {self.consistency!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise InputError(f"eta must be in [0, 1], got {self.eta}")
        if not 0.5 <= self.spacing_power <= 4.0:
            raise InputError(f"spacing_power must be in [0.5, 4], got {self.spacing_power}")
        if self.noise_std is not None and not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise InputError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        if not 0.0 <= self.variance_smoothing_px <= MAX_VARIANCE_SMOOTHING_PX:
            raise InputError(
                f"variance smoothing must be in [0, {MAX_VARIANCE_SMOOTHING_PX:g}] pixels, "
                f"got {self.variance_smoothing_px}"
            )
        return self


class Progress(NamedTuple):
    """One finished step of a stage ("coarse" or "refine")."""

    stage: str
    step: int
    total: int


class Reconstruction(NamedTuple):
    """Result of :func:`reconstruct`, in the units of the zero-filled input.

    ``variance`` is the (unbiased) variance of the magnitude across the coarse samples, pooled
    with a Gaussian of ``SamplerConfig.variance_smoothing_px``, None for a single sample.
    ``samples`` (N, H, W) only when ``SamplerConfig.keep_samples``. ``dc_residual`` is
    ``||M F S x - y|| / ||y||`` of ``image``; with noise-aware consistency (``noise_std`` > 0)
    it is about the noise level, not 0. ``noise_std`` is the measurement noise used (input
    units).
    """

    image: np.ndarray
    magnitude: np.ndarray
    variance: np.ndarray | None
    samples: np.ndarray | None
    dc_residual: float
    warnings: list[str]
    scale: float
    timesteps: list[int]
    noise_std: float = 0.0


@dataclass(frozen=True)
class Measurement:
    """Measured k-space in the prior's intensity units, as torch tensors on one device,
    with its noise std per real/imaginary channel in the same units."""

    kspace: Tensor
    mask: Tensor
    maps: Tensor | None
    noise_std: float = 0.0

    def forward(self, image: Tensor) -> Tensor:
        """``M F S x`` for images (B, H, W) -> k-space (B, [C,] H, W)."""
        if self.maps is None:
            return physics.single_coil_forward(image, self.mask)
        return physics.sense_forward(image, self.maps, self.mask)

    def adjoint(self, kspace: Tensor) -> Tensor:
        if self.maps is None:
            return physics.single_coil_adjoint(kspace, self.mask)
        return physics.sense_adjoint(kspace, self.maps, self.mask)

    def noised(
        self, schedule: DiffusionSchedule, t: int, batch: int, generator: torch.Generator
    ) -> Tensor:
        """``sqrt(abar_t) y + s M F S eps`` per batch member (clean at CLEAN), where
        ``s = sqrt(1 - abar_t - abar_t sigma^2)`` tops the measurement noise up to the level's."""
        y = self.kspace.expand(batch, *self.kspace.shape)
        if t == CLEAN:
            return y
        abar = float(schedule.alpha_bars[t])
        eps = to_complex(randn((batch, 2, *self.mask.shape), generator, self.kspace.device))
        return abar**0.5 * y + added_noise_std(abar, self.noise_std) * self.forward(eps)

    def weight(self, schedule: DiffusionSchedule, t: int) -> float:
        """Weight of the measurements in data consistency at level ``t`` (1 when noiseless)."""
        abar = 1.0 if t == CLEAN else float(schedule.alpha_bars[t])
        return data_weight(abar, self.noise_std)

    def project(
        self, image: Tensor, target: Tensor, iterations: int = 1, weight: float = 1.0
    ) -> Tensor:
        """Data consistency: move the sampled k-space of ``image`` (B, H, W) to ``target``.

        Single coil: ``k + weight (target - k)`` on the sampled locations (exact replacement at
        weight 1). Multi-coil: one step ``x - weight S^H F^H M (M F S x - y)`` when
        ``iterations`` is 1 or ``weight`` < 1, else that many conjugate gradient (CGLS) steps on
        ``min ||M F S x - y||``, which change ``x`` only within the range of ``S^H F^H M`` (the
        unmeasured part of ``x`` is kept).
        """
        if self.maps is None:
            kspace = physics.fft2c(image)
            moved = target if weight == 1.0 else kspace + weight * (target - kspace)
            return physics.ifft2c(torch.where(self.mask, moved, kspace))
        if iterations <= 1 or weight < 1.0:
            return image - weight * self.adjoint(self.forward(image) - target)
        return self._cgls(image, target, iterations)

    def after_step(
        self,
        x: Tensor,
        target: Tensor,
        schedule: DiffusionSchedule,
        t: int,
        final_iterations: int,
    ) -> Tensor:
        """Data consistency of channels ``x`` (B, 2, H, W) after a step down to level ``t``: one
        projection weighted for the level, or ``final_iterations`` at the clean end."""
        iterations = final_iterations if t == CLEAN else 1
        weight = self.weight(schedule, t)
        return to_channels(self.project(to_complex(x), target, iterations, weight))

    def consistent_eps(
        self,
        x: Tensor,
        eps: Tensor,
        schedule: DiffusionSchedule,
        t: int,
        clip_x0: float | None,
        iterations: int,
    ) -> Tensor:
        """The noise estimate whose clean image is the prior's, made consistent with the clean
        measurements (DDNM, Wang et al., ICLR 2023; DDS, Chung et al., ICLR 2024)."""
        x0 = schedule.predict_x0(x, t, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        batch = x.shape[0]
        target = self.kspace.expand(batch, *self.kspace.shape)
        x0 = self.after_step(x0, target, schedule, CLEAN, iterations)
        return schedule.predict_eps(x, t, x0)

    def _cgls(self, image: Tensor, target: Tensor, iterations: int) -> Tensor:
        """CGLS (Hestenes-Stiefel) for the SENSE least-squares problem, batched, from ``image``."""

        def squared_norm(z: Tensor) -> Tensor:
            return z.abs().square().flatten(start_dim=1).sum(dim=1)

        def per_item(value: Tensor, like: Tensor) -> Tensor:
            return value.reshape(-1, *([1] * (like.dim() - 1)))

        tiny = torch.finfo(torch.float32).tiny
        x = image
        residual = target - self.forward(x)
        gradient = self.adjoint(residual)
        direction = gradient
        gamma = squared_norm(gradient)
        for _ in range(iterations):
            step_kspace = self.forward(direction)
            alpha = gamma / squared_norm(step_kspace).clamp_min(tiny)
            x = x + per_item(alpha, x) * direction
            residual = residual - per_item(alpha, residual) * step_kspace
            gradient = self.adjoint(residual)
            gamma_next = squared_norm(gradient)
            beta = gamma_next / gamma.clamp_min(tiny)
            direction = gradient + per_item(beta, direction) * direction
            gamma = gamma_next
        return x


def randn(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise from a CPU generator (same numbers on every device)."""
    return torch.randn(tuple(shape), generator=generator).to(device)


def to_complex(x: Tensor) -> Tensor:
    """(B, 2, H, W) real/imag -> (B, H, W) complex."""
    return torch.complex(x[:, 0].float(), x[:, 1].float())


def to_channels(z: Tensor) -> Tensor:
    """(B, H, W) complex -> (B, 2, H, W) real/imag."""
    return torch.stack([z.real, z.imag], dim=1)


def prior_eps_function(prior: LoadedPrior, bf16: bool = True) -> EpsFunction:
    """The prior's noise prediction, padding H, W to the network's multiple and cropping back."""
    multiple = prior.config.size_multiple

    def eps_fn(x: Tensor, t: int) -> Tensor:
        padded, offset = pad_to_multiple(x, multiple)
        padded = padded.contiguous(memory_format=torch.channels_last)
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        with bf16_autocast(x.device, bf16):
            eps = prior.model(padded, steps)
        return crop_to(eps.float(), offset, (x.shape[-2], x.shape[-1]))

    return eps_fn


def coarse_timesteps(config: SamplerConfig, num_timesteps: int) -> list[int]:
    """Ascending timesteps of the coarse stage (respaced or every step, up to the start step, or
    below a warm start)."""
    start = num_timesteps - 1 if config.start_step is None else config.start_step
    count = start + 1 if config.full_schedule else config.steps
    timesteps = space_timesteps(num_timesteps, count, start, config.spacing_power)
    if config.warm_start is not None:
        timesteps = [*(t for t in timesteps if t < config.warm_start), config.warm_start]
    return timesteps


def input_warnings(mask: np.ndarray, pixel_size_mm: Sequence[float] | None) -> list[str]:
    """Why this input may be far from what the prior was trained on (empty when typical)."""
    warnings: list[str] = []
    height, width = mask.shape
    low, high = SENSIBLE_MATRIX
    if not (low <= height <= high and low <= width <= high):
        warnings.append(f"matrix {height}x{width} outside the trained range {low}-{high}")
    if pixel_size_mm is not None:
        sizes = [float(s) for s in pixel_size_mm]
        if any(not TRAINED_PIXEL_MM[0] <= s <= TRAINED_PIXEL_MM[1] for s in sizes):
            shown = "x".join(f"{s:.2g}" for s in sizes)
            warnings.append(f"pixel size {shown} mm far from the trained 1-2 mm")
    for axis, name in ((0, "rows"), (1, "columns")):
        extent = _one_sided_extent(np.asarray(mask.any(axis=1 - axis)))
        if extent is not None and extent < PARTIAL_FOURIER_RATIO:
            warnings.append(f"asymmetric k-space coverage of {name} (partial Fourier?)")
    block_h = max(2, round(height * CENTRE_BLOCK_FRACTION))
    block_w = max(2, round(width * CENTRE_BLOCK_FRACTION))
    top, left = height // 2 - block_h // 2, width // 2 - block_w // 2
    centre = mask[top : top + block_h, left : left + block_w]
    if centre.mean() < MIN_CENTRE_SAMPLED:
        warnings.append(f"k-space centre only {centre.mean():.0%} sampled")
    return warnings


def _one_sided_extent(sampled: np.ndarray) -> float | None:
    """Ratio of the shorter to the longer reach of sampled lines either side of the centre."""
    indices = np.flatnonzero(sampled)
    if indices.size == 0:
        return None
    centre = sampled.shape[0] // 2
    below = centre - indices.min()
    above = indices.max() - centre
    longest = max(below, above)
    half = sampled.shape[0] // 2
    if longest < half * 0.5:  # a low-resolution acquisition, symmetric or not, is not PF
        return None
    return float(min(below, above) / longest)


def _broadcast_mask(mask: np.ndarray | Tensor, shape: tuple[int, int]) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    try:
        return np.broadcast_to(array.astype(bool), shape).copy()
    except ValueError as error:
        raise InputError(f"mask shape {array.shape} does not fit k-space {shape}") from error


def _as_complex_array(data: np.ndarray | Tensor, what: str) -> np.ndarray:
    array = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if not np.iscomplexobj(array):
        raise InputError(f"{what} must be complex, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} contains NaN or infinite values")
    return array.astype(np.complex64)


def prepare_measurement(
    kspace: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    maps: np.ndarray | Tensor | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated complex64 k-space, boolean (H, W) mask and maps (ESPIRiT if multi-coil, none)."""
    measured = _as_complex_array(kspace, "k-space")
    if measured.ndim == 3 and measured.shape[0] == 1 and maps is None:
        measured = measured[0]
    if measured.ndim not in (2, 3):
        raise InputError(f"k-space must be (H, W) or (C, H, W), got shape {measured.shape}")
    shape = (int(measured.shape[-2]), int(measured.shape[-1]))
    sampled = _broadcast_mask(mask, shape)
    if not sampled.any():
        raise InputError("mask samples no k-space location")
    measured = measured * sampled
    coil_maps: np.ndarray | None = None
    if measured.ndim == 3:
        if maps is None:
            from services.recon.coils import espirit_maps

            coil_maps = espirit_maps(measured)
        else:
            coil_maps = _as_complex_array(maps, "coil maps")
        if coil_maps.shape != measured.shape:
            raise InputError(f"coil maps {coil_maps.shape} do not match k-space {measured.shape}")
    elif maps is not None:
        raise InputError("coil maps given for single-coil k-space")
    return measured, sampled, coil_maps


def iter_reconstruct(
    prior: LoadedPrior,
    kspace: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    maps: np.ndarray | Tensor | None = None,
    config: SamplerConfig | None = None,
    seed: int = 0,
    initial: np.ndarray | Tensor | None = None,
    pixel_size_mm: Sequence[float] | None = None,
) -> Iterator[Progress | Reconstruction]:
    """Reconstruct one slice, yielding :class:`Progress` per step and finally the result.

    ``kspace`` is (H, W) single-coil or (C, H, W) multi-coil, centred; ``mask`` broadcasts to
    (H, W); ``maps`` (C, H, W) are ESPIRiT maps (estimated here when None and multi-coil).
    Warm start: with ``config.warm_start = t0`` the samples start from ``initial`` (H, W)
    complex, in the units of the zero-filled image (default: the zero-filled image itself),
    noised to ``t0``; giving ``initial`` without ``warm_start`` uses ``t0 = 400``.
    """
    schedule = prior.schedule
    cfg = config or SamplerConfig()
    if initial is not None and cfg.warm_start is None:
        cfg = replace(cfg, warm_start=min(DEFAULT_WARM_START, schedule.num_timesteps - 1))
    cfg = cfg.validated(schedule.num_timesteps)
    measured, sampled, coil_maps = prepare_measurement(kspace, mask, maps)
    warnings = input_warnings(sampled, pixel_size_mm)
    device = prior.device
    generator = torch.Generator().manual_seed(seed)
    eps_fn = prior_eps_function(prior, cfg.bf16)

    # Inference mode is entered per block, never across a yield, so it does not leak into
    # the caller's code between progress reports.
    with torch.inference_mode():
        mask_t = torch.as_tensor(sampled, device=device)
        maps_t = None if coil_maps is None else torch.as_tensor(coil_maps, device=device)
        raw = Measurement(torch.as_tensor(measured, device=device), mask_t, maps_t)
        zero_filled = raw.adjoint(raw.kspace)
        scale = float(p99_scale(zero_filled.abs()))
        if not scale > 1e-12:
            raise InputError("measured k-space is zero; nothing to reconstruct")
        noise_std = cfg.noise_std
        if noise_std is None:
            noise_std = estimate_noise_std(measured, sampled) or 0.0
        data = Measurement(raw.kspace / scale, mask_t, maps_t, noise_std / scale)
        height, width = sampled.shape

        timesteps = coarse_timesteps(cfg, schedule.num_timesteps)
        start = timesteps[-1]
        batch = cfg.samples
        if cfg.warm_start is not None:
            estimate = zero_filled if initial is None else _initial_estimate(initial, device)
            if estimate.shape != (height, width):
                raise InputError(f"initial estimate {tuple(estimate.shape)} is not {sampled.shape}")
            x0 = to_channels(estimate[None] / scale).expand(batch, -1, -1, -1)
            x = schedule.q_sample(x0, start, randn((batch, 2, height, width), generator, device))
        else:
            x = randn((batch, 2, height, width), generator, device)
        target = data.noised(schedule, start, batch, generator)
        x = data.after_step(x, target, schedule, start, cfg.final_dc_iterations)

    pairs = step_pairs(timesteps)
    for number, (t, t_prev) in enumerate(pairs, start=1):
        with torch.inference_mode():
            eps = eps_fn(x, t)
            noise = randn(x.shape, generator, device) if cfg.eta > 0 else None
            clip = cfg.clip_x0
            if cfg.consistency == "estimate":
                eps = data.consistent_eps(x, eps, schedule, t, clip, cfg.final_dc_iterations)
                clip = None  # clipped before the projection; clipping again would undo it
            x = schedule.ddim_step(x, eps, t, t_prev, cfg.eta, noise, clip)
            if cfg.consistency == "noised":
                target = data.noised(schedule, t_prev, batch, generator)
                x = data.after_step(x, target, schedule, t_prev, cfg.final_dc_iterations)
        yield Progress("coarse", number, len(pairs))

    with torch.inference_mode():
        samples = to_complex(x)
        variance = samples.abs().var(dim=0, correction=1) if batch > 1 else None
        image = samples.mean(dim=0, keepdim=True)
        refine_pairs = step_pairs(list(range(cfg.refine_steps))) if cfg.refine_steps else []
        if refine_pairs:
            noise = randn((1, 2, height, width), generator, device)
            x = schedule.q_sample(to_channels(image), refine_pairs[0][0], noise)

    for number, (t, t_prev) in enumerate(refine_pairs, start=1):
        with torch.inference_mode():
            x = schedule.ddim_step(x, eps_fn(x, t), t, t_prev, 0.0, None, cfg.clip_x0)
            x = data.after_step(x, data.kspace[None], schedule, t_prev, cfg.final_dc_iterations)
            image = to_complex(x)
        yield Progress("refine", number, len(refine_pairs))

    with torch.inference_mode():
        final = (image[0] * scale).cpu().numpy().astype(np.complex64)
        variance_out = None
        if variance is not None:
            variance_out = pooled_variance(
                (variance * scale**2).cpu().numpy(), cfg.variance_smoothing_px
            )
        samples_out = (samples * scale).cpu().numpy() if cfg.keep_samples else None
    residual = physics.data_consistency_residual(final, measured, sampled, maps=coil_maps)
    yield Reconstruction(
        image=final,
        magnitude=np.abs(final).astype(np.float32),
        variance=variance_out,
        samples=samples_out,
        dc_residual=float(residual),
        warnings=warnings,
        scale=scale,
        timesteps=timesteps,
        noise_std=float(noise_std),
    )


def pooled_variance(variance: np.ndarray, sigma_px: float) -> np.ndarray:
    """Per-pixel variance (H, W) averaged over a Gaussian neighbourhood of ``sigma_px``."""
    if sigma_px <= 0:
        return variance
    return np.asarray(ndimage.gaussian_filter(variance, sigma_px, mode="nearest"))


def _initial_estimate(initial: np.ndarray | Tensor, device: torch.device) -> Tensor:
    array = initial.detach().cpu().numpy() if isinstance(initial, Tensor) else np.asarray(initial)
    if not np.isfinite(array).all():
        raise InputError("initial estimate contains NaN or infinite values")
    return torch.as_tensor(array.astype(np.complex64), device=device)


def reconstruct(
    prior: LoadedPrior,
    kspace: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    maps: np.ndarray | Tensor | None = None,
    config: SamplerConfig | None = None,
    seed: int = 0,
    initial: np.ndarray | Tensor | None = None,
    pixel_size_mm: Sequence[float] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Reconstruction:
    """Run :func:`iter_reconstruct` to the end and return its :class:`Reconstruction`."""
    for item in iter_reconstruct(prior, kspace, mask, maps, config, seed, initial, pixel_size_mm):
        if isinstance(item, Reconstruction):
            return item
        if on_progress is not None:
            on_progress(item)
    raise RuntimeError("sampler ended without a result")


def sample_unconditional(
    prior: LoadedPrior,
    seeds: Sequence[int],
    steps: int = 50,
    shape: tuple[int, int] = (128, 128),
    eta: float = 1.0,
    batch: int = 8,
    clip_x0: float | None = CLIP_X0,
    start_step: int = UNCONDITIONAL_START_STEP,
) -> np.ndarray:
    """Unconditional DDIM samples of the prior, one per seed, complex (S, H, W), p99 units.

    Sample ``i`` depends only on ``seeds[i]`` (its own generator for the starting noise and,
    with ``eta > 0``, the step noise). ``eta = 1`` by default: with an early prior the
    deterministic ``eta = 0`` path diverged to the clipping bound where ``eta = 1`` did not.
    Sampling starts from pure noise at ``start_step`` (:data:`UNCONDITIONAL_START_STEP`; a
    schedule shorter than that starts at its last step).
    """
    schedule = prior.schedule
    if not 1 <= steps <= schedule.num_timesteps:
        raise InputError(f"steps must be in [1, {schedule.num_timesteps}], got {steps}")
    device = prior.device
    eps_fn = prior_eps_function(prior)
    if start_step < 0:
        raise InputError(f"start_step must be >= 0, got {start_step}")
    start = min(start_step, schedule.num_timesteps - 1)
    pairs = step_pairs(space_timesteps(schedule.num_timesteps, steps, start))
    results: list[Tensor] = []
    with torch.inference_mode():
        for first in range(0, len(seeds), batch):
            group = list(seeds[first : first + batch])
            generators = [torch.Generator().manual_seed(s) for s in group]
            x = torch.cat([randn((1, 2, *shape), g, device) for g in generators])
            for t, t_prev in pairs:
                noise = None
                if eta > 0:
                    noise = torch.cat([randn((1, 2, *shape), g, device) for g in generators])
                x = schedule.ddim_step(x, eps_fn(x, t), t, t_prev, eta, noise, clip_x0)
            results.append(to_complex(x).cpu())
    return torch.cat(results).numpy()
