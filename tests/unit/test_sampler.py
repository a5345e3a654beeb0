"""The k-space-guided sampler with a tiny randomly initialised prior on 32x32 slices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from services.recon import physics
from services.recon.coils import birdcage_maps
from services.recon.data.sample_data import template_slices
from services.recon.errors import InputError
from services.recon.masks import make_mask
from services.recon.metrics import foreground_mask
from services.recon.prior import DEFAULT_WEIGHTS, LoadedPrior, load_prior
from services.recon.sampler import (
    Progress,
    Reconstruction,
    SamplerConfig,
    coarse_timesteps,
    input_warnings,
    iter_reconstruct,
    reconstruct,
    sample_unconditional,
)

SIZE = 32
FAST = SamplerConfig(samples=3, steps=6, refine_steps=3)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def phantom(size: int = SIZE) -> np.ndarray:
    """Complex ellipse with a bright spot and a smooth phase, in arbitrary (large) units."""
    rows, cols = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    image = 300.0 * ((rows / 0.8) ** 2 + (cols / 0.6) ** 2 <= 1)
    image += 200.0 * ((rows - 0.2) ** 2 + (cols + 0.1) ** 2 <= 0.04)
    return (image * np.exp(1j * 0.7 * rows)).astype(np.complex64)


def column_mask(size: int = SIZE, every: int = 3, centre: int = 6) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[:, ::every] = True
    mask[:, size // 2 - centre // 2 : size // 2 + centre // 2] = True
    return mask


def test_single_coil_result_matches_measurements_on_sampled_locations(
    tiny_prior: LoadedPrior,
) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    result = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=1)
    predicted = physics.fft2c(result.image.astype(np.complex128))
    error = np.abs(predicted[mask] - kspace[mask]).max()
    assert error <= 1e-5 * np.abs(kspace).max()
    assert result.dc_residual < 1e-5
    assert result.image.shape == (SIZE, SIZE) and result.image.dtype == np.complex64
    np.testing.assert_allclose(result.magnitude, np.abs(result.image))


def test_noise_aware_consistency_estimates_the_noise_and_does_not_copy_it(
    tiny_prior: LoadedPrior,
) -> None:
    sigma = 40.0  # well above the phantom's sharp edges in the k-space corners
    rng = np.random.default_rng(4)
    noise = sigma * (rng.standard_normal((SIZE, SIZE)) + 1j * rng.standard_normal((SIZE, SIZE)))
    mask = np.ones((SIZE, SIZE), dtype=bool)
    mask[::2, 1::2] = False
    kspace = (physics.fft2c(phantom()) + noise) * mask
    aware = reconstruct(tiny_prior, kspace, mask, config=replace(FAST, noise_std=None), seed=1)
    assert aware.noise_std == pytest.approx(sigma, rel=0.3)
    exact = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=1)
    assert exact.noise_std == 0.0 and exact.dc_residual < 1e-5
    assert aware.dc_residual > 1e-3  # the last steps weigh the noisy data below 1
    given = reconstruct(tiny_prior, kspace, mask, config=replace(FAST, noise_std=sigma), seed=1)
    assert given.noise_std == sigma
    maps = birdcage_maps(2, (SIZE, SIZE))
    coils = physics.sense_forward(phantom(), maps, mask) + noise[None] * mask
    multi = reconstruct(
        tiny_prior, coils, mask, maps=maps, config=replace(FAST, noise_std=sigma), seed=1
    )
    assert np.isfinite(multi.image).all()
    with pytest.raises(InputError, match="noise_std"):
        reconstruct(tiny_prior, kspace, mask, config=replace(FAST, noise_std=-1.0))


def test_multi_coil_residual_is_below_that_of_the_zero_filled_start(
    tiny_prior: LoadedPrior,
) -> None:
    maps = birdcage_maps(4, (SIZE, SIZE))
    mask = column_mask()
    kspace = physics.sense_forward(phantom(), maps, np.ones((SIZE, SIZE), bool)) * mask
    zero_filled = physics.sense_adjoint(kspace, maps, mask)
    start = physics.data_consistency_residual(zero_filled, kspace, mask, maps=maps)
    result = reconstruct(tiny_prior, kspace, mask, maps=maps, config=FAST, seed=0)
    assert result.dc_residual < start
    assert result.dc_residual == pytest.approx(
        physics.data_consistency_residual(result.image, kspace, mask, maps=maps)
    )


def test_variance_is_non_negative_and_zero_when_fully_sampled(tiny_prior: LoadedPrior) -> None:
    image = phantom()
    undersampled = reconstruct(
        tiny_prior, physics.fft2c(image) * column_mask(), column_mask(), config=FAST
    )
    assert undersampled.variance is not None
    assert (undersampled.variance >= 0).all() and undersampled.variance.max() > 0
    full = np.ones((SIZE, SIZE), dtype=bool)
    fully = reconstruct(tiny_prior, physics.fft2c(image), full, config=FAST)
    assert fully.variance is not None
    assert fully.variance.max() <= 1e-8 * np.abs(image).max() ** 2
    np.testing.assert_allclose(fully.image, image, atol=1e-4 * np.abs(image).max())


def test_same_seed_same_result_and_other_seed_differs(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    first = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=5)
    again = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=5)
    other = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=6)
    np.testing.assert_array_equal(first.image, again.image)
    assert first.variance is not None and again.variance is not None
    np.testing.assert_array_equal(first.variance, again.variance)
    assert not np.allclose(first.image, other.image)


def test_outputs_are_in_the_units_of_the_input(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    base = reconstruct(tiny_prior, kspace, mask, config=FAST, seed=2)
    scaled = reconstruct(tiny_prior, kspace * 1000, mask, config=FAST, seed=2)
    assert scaled.scale == pytest.approx(base.scale * 1000, rel=1e-5)
    np.testing.assert_allclose(scaled.image, base.image * 1000, rtol=1e-3, atol=1e-3 * base.scale)
    assert base.variance is not None and scaled.variance is not None
    np.testing.assert_allclose(
        scaled.variance, base.variance * 1e6, rtol=1e-2, atol=1e-3 * base.scale**2 * 1e6
    )


def test_progress_comes_per_step_then_the_result(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    items = list(iter_reconstruct(tiny_prior, physics.fft2c(phantom()) * mask, mask, config=FAST))
    assert isinstance(items[-1], Reconstruction)
    progress = [item for item in items[:-1] if isinstance(item, Progress)]
    assert len(progress) == len(items) - 1
    assert [p for p in progress if p.stage == "coarse"] == [
        Progress("coarse", i, 6) for i in range(1, 7)
    ]
    assert [p for p in progress if p.stage == "refine"] == [
        Progress("refine", i, 3) for i in range(1, 4)
    ]


def test_samples_are_kept_on_request_and_average_to_the_unrefined_image(
    tiny_prior: LoadedPrior,
) -> None:
    mask = column_mask()
    config = SamplerConfig(samples=4, steps=5, refine_steps=0, keep_samples=True)
    kspace = physics.fft2c(phantom()) * mask
    result = reconstruct(tiny_prior, kspace, mask, config=config)
    assert result.samples is not None and result.samples.shape == (4, SIZE, SIZE)
    np.testing.assert_allclose(result.image, result.samples.mean(axis=0), rtol=1e-5, atol=1e-3)
    per_pixel = np.abs(result.samples).var(axis=0, ddof=1)
    raw = reconstruct(tiny_prior, kspace, mask, config=replace(config, variance_smoothing_px=0))
    assert raw.variance is not None and result.variance is not None
    np.testing.assert_allclose(raw.variance, per_pixel, rtol=1e-3, atol=1e-3)
    pooled = ndimage.gaussian_filter(per_pixel, config.variance_smoothing_px, mode="nearest")
    np.testing.assert_allclose(result.variance, pooled, rtol=1e-3, atol=1e-3)
    assert result.variance.sum() == pytest.approx(per_pixel.sum(), rel=0.05)


def test_single_sample_has_no_variance(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    config = SamplerConfig(samples=1, steps=3, refine_steps=1)
    result = reconstruct(tiny_prior, physics.fft2c(phantom()) * mask, mask, config=config)
    assert result.variance is None


def test_warm_start_runs_only_the_steps_below_t0(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    config = SamplerConfig(samples=2, steps=10, refine_steps=2, warm_start=40)
    result = reconstruct(tiny_prior, kspace, mask, config=config, initial=physics.ifft2c(kspace))
    assert result.timesteps[-1] == 40 and all(t <= 40 for t in result.timesteps)
    assert len(result.timesteps) < 10
    assert result.dc_residual < 1e-5
    with pytest.raises(InputError, match="initial estimate"):
        reconstruct(tiny_prior, kspace, mask, config=config, initial=np.zeros((8, 8), complex))


def test_full_schedule_walks_every_timestep(tiny_prior: LoadedPrior) -> None:
    config = SamplerConfig(samples=2, steps=10, refine_steps=0, full_schedule=True)
    assert coarse_timesteps(config, 100) == list(range(100))
    mask = column_mask()
    result = reconstruct(tiny_prior, physics.fft2c(phantom()) * mask, mask, config=config)
    assert result.timesteps == list(range(100))


def test_cold_start_begins_at_the_start_step() -> None:
    config = SamplerConfig(steps=10, start_step=900)
    assert coarse_timesteps(config, 1000)[-1] == 900
    assert len(coarse_timesteps(config, 1000)) == 10
    full = SamplerConfig(full_schedule=True, start_step=900)
    assert coarse_timesteps(full, 1000) == list(range(901))
    assert coarse_timesteps(SamplerConfig(steps=10), 1000)[-1] == 999  # default: T - 1
    warm = SamplerConfig(steps=10, start_step=900, warm_start=300)
    assert coarse_timesteps(warm, 1000)[-1] == 300
    for bad in (-1, 1000):
        with pytest.raises(InputError, match="start_step"):
            SamplerConfig(start_step=bad).validated(1000)


def test_sizes_not_divisible_by_eight_are_padded_inside(tiny_prior: LoadedPrior) -> None:
    rows, cols = np.mgrid[-1:1:30j, -1:1:36j]
    image = ((rows**2 + cols**2) < 0.5).astype(np.complex64)
    mask = np.zeros((30, 36), dtype=bool)
    mask[:, ::2] = True
    mask[:, 15:21] = True
    result = reconstruct(tiny_prior, physics.fft2c(image) * mask, mask, config=FAST)
    assert result.image.shape == (30, 36) and result.dc_residual < 1e-5


def test_mask_may_be_a_column_vector_and_kspace_a_single_coil_stack(
    tiny_prior: LoadedPrior,
) -> None:
    columns = column_mask()[0]
    kspace = (physics.fft2c(phantom()) * columns)[None]
    result = reconstruct(tiny_prior, kspace, columns, config=FAST)
    assert result.image.shape == (SIZE, SIZE)


def test_bad_inputs_are_input_errors(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom())
    with pytest.raises(InputError, match="complex"):
        reconstruct(tiny_prior, np.abs(kspace), mask, config=FAST)
    with pytest.raises(InputError, match="mask shape"):
        reconstruct(tiny_prior, kspace, np.ones((5, 5), bool), config=FAST)
    with pytest.raises(InputError, match="zero"):
        reconstruct(tiny_prior, np.zeros_like(kspace), mask, config=FAST)
    with pytest.raises(InputError, match="no k-space location"):
        reconstruct(tiny_prior, kspace, np.zeros_like(mask), config=FAST)
    with pytest.raises(InputError, match="samples"):
        reconstruct(tiny_prior, kspace, mask, config=SamplerConfig(samples=0))
    with pytest.raises(InputError, match="variance smoothing"):
        reconstruct(tiny_prior, kspace, mask, config=SamplerConfig(variance_smoothing_px=-1))
    with pytest.raises(InputError, match="single-coil"):
        reconstruct(tiny_prior, kspace, mask, maps=np.ones((2, SIZE, SIZE), complex))
    bad = kspace.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        reconstruct(tiny_prior, bad, mask, config=FAST)


def test_warnings_name_inputs_far_from_training() -> None:
    typical = np.zeros((128, 128), dtype=bool)
    typical[:, ::4] = True
    typical[:, 58:70] = True
    assert input_warnings(typical, (1.0, 1.0)) == []
    assert any("pixel size" in w for w in input_warnings(typical, (4.0, 4.0)))
    assert any("matrix" in w for w in input_warnings(column_mask(), None))
    partial = typical.copy()
    partial[:, 100:] = False
    assert any("partial Fourier" in w for w in input_warnings(partial, None))
    sparse_centre = np.zeros((128, 128), dtype=bool)
    sparse_centre[:, ::8] = True
    assert any("centre" in w for w in input_warnings(sparse_centre, None))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_unconditional_samples_depend_only_on_their_seed(
    tiny_prior: LoadedPrior, eta: float
) -> None:
    together = sample_unconditional(tiny_prior, [1, 2, 3], steps=4, shape=(16, 16), eta=eta)
    alone = sample_unconditional(tiny_prior, [3], steps=4, shape=(16, 16), eta=eta)
    assert together.shape == (3, 16, 16) and np.iscomplexobj(together)
    np.testing.assert_allclose(alone[0], together[2], rtol=1e-3, atol=1e-3)
    assert not np.allclose(together[0], together[1])


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="needs the shipped prior weights")
def test_region_whose_signal_was_removed_from_the_measurement_is_more_uncertain() -> None:
    """Keep 5 of 8 coils and make them blind to the side of the head the 3 dropped coils saw
    (their maps faded to zero there): that region's k-space content is gone from the
    measurement, so the samples must disagree more there than in the rest of the head; with
    all 8 coils the same region is no more uncertain than the rest (the control).

    (Dropping the coils alone is not enough: the kept birdcage maps' tails still see that side,
    and with noise-free data SENSE recovers it; session 12, BENCHMARKS.md.)"""
    torch.set_num_threads(2)
    prior = load_prior()
    image = template_slices()[4].astype(np.float64)
    size = image.shape[0]
    maps = birdcage_maps(8, (size, size))
    kept = maps[3:]
    head = foreground_mask(image)
    coverage = (np.abs(kept) ** 2).sum(axis=0)
    weak = head & (coverage <= np.quantile(coverage[head], 0.2))
    blind_there = 1.0 - np.clip(1.5 * ndimage.gaussian_filter(weak.astype(np.float64), 2.0), 0, 1)
    mask = make_mask("random1d", (size, size), 4.0, 0.08, seed=0)

    def weak_to_rest_variance(coil_maps: np.ndarray) -> float:
        kspace = physics.fft2c((coil_maps * image[None]).astype(np.complex64)) * mask
        result = reconstruct(prior, kspace, mask, maps=coil_maps, config=SamplerConfig(), seed=0)
        assert result.variance is not None
        return float(result.variance[weak].mean() / result.variance[head & ~weak].mean())

    removed, control = weak_to_rest_variance(kept * blind_there), weak_to_rest_variance(maps)
    assert removed > 2.0 and control < 1.1, (removed, control)


def test_inference_mode_does_not_leak_to_the_caller_between_steps(
    tiny_prior: LoadedPrior,
) -> None:
    mask = column_mask()
    for _ in iter_reconstruct(tiny_prior, physics.fft2c(phantom()) * mask, mask, config=FAST):
        assert not torch.is_inference_mode_enabled()


def test_an_initial_estimate_alone_starts_warm_at_the_default_t0(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    config = SamplerConfig(samples=2, steps=10, refine_steps=0)
    result = reconstruct(tiny_prior, kspace, mask, config=config, initial=physics.ifft2c(kspace))
    assert result.timesteps[-1] == 99  # min(400, T - 1) for this T = 100 prior
    cold = reconstruct(tiny_prior, kspace, mask, config=config)
    assert not np.allclose(result.image, cold.image)


def test_consistency_on_the_clean_estimate_keeps_the_measurements(tiny_prior: LoadedPrior) -> None:
    mask = column_mask()
    kspace = physics.fft2c(phantom()) * mask
    config = replace(FAST, consistency="estimate", refine_steps=0)
    result = reconstruct(tiny_prior, kspace, mask, config=config, seed=1)
    assert result.dc_residual < 1e-5
    noised = reconstruct(tiny_prior, kspace, mask, config=replace(config, consistency="noised"))
    assert not np.allclose(result.image, noised.image)
    maps = birdcage_maps(4, (SIZE, SIZE))
    coils = physics.sense_forward(phantom(), maps, np.ones((SIZE, SIZE), bool)) * mask
    start = physics.data_consistency_residual(
        physics.sense_adjoint(coils, maps, mask), coils, mask, maps=maps
    )
    multi = reconstruct(tiny_prior, coils, mask, maps=maps, config=config, seed=0)
    assert multi.dc_residual < start
    with pytest.raises(InputError, match="consistency"):
        reconstruct(tiny_prior, kspace, mask, config=replace(FAST, consistency="exact"))
