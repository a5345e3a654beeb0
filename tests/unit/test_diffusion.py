"""The noise schedule and the DDPM / DDIM steps, checked against their closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from services.recon.diffusion import (
    CLEAN,
    DiffusionSchedule,
    cosine_alpha_bars,
    space_timesteps,
    step_pairs,
)


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule.cosine(1000)


def test_cosine_schedule_matches_closed_form_and_decreases() -> None:
    alpha_bars = cosine_alpha_bars(1000)
    assert alpha_bars.dtype == torch.float64 and alpha_bars.shape == (1000,)
    assert torch.all(alpha_bars[1:] < alpha_bars[:-1])

    def f(t: float) -> float:
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 100, 500, 900):
        assert alpha_bars[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert alpha_bars[0] > 0.9999 and alpha_bars[-1] < 1e-4


def test_space_timesteps_are_even_ascending_and_keep_both_ends() -> None:
    steps = space_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 999
    assert steps == sorted(set(steps))
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert max(gaps) - min(gaps) <= 1
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 5, start=399) == [0, 100, 200, 299, 399]
    assert space_timesteps(1000, 1) == [999]
    with pytest.raises(ValueError):
        space_timesteps(1000, 10, start=1000)


def test_power_spacing_is_denser_at_low_noise_and_keeps_both_ends() -> None:
    steps = space_timesteps(1000, 45, power=1.5)
    assert steps[0] == 0 and steps[-1] == 999 and steps == sorted(set(steps))
    assert len(steps) >= 44  # at most the lowest steps merge when rounded
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert gaps[0] < gaps[-1] and all(b >= a - 1 for a, b in itertools.pairwise(gaps))
    assert steps[len(steps) // 2] < 999 / 2
    assert space_timesteps(1000, 1000, power=2.0) == list(range(1000))
    assert space_timesteps(1000, 45, power=1.0) == space_timesteps(1000, 45)
    with pytest.raises(ValueError, match="power"):
        space_timesteps(1000, 45, power=0.0)


def test_step_pairs_walk_down_to_clean() -> None:
    assert step_pairs([0, 10, 20]) == [(20, 10), (10, 0), (0, CLEAN)]


def test_q_sample_mixes_signal_and_noise_by_alpha_bar(schedule: DiffusionSchedule) -> None:
    x0, noise = torch.full((2, 2, 4, 4), 3.0), torch.ones(2, 2, 4, 4)
    t = torch.tensor([0, 999])
    x_t = schedule.q_sample(x0, t, noise)
    abar = schedule.alpha_bars[[0, 999]].float()
    expected = 3 * abar.sqrt() + (1 - abar).sqrt()
    torch.testing.assert_close(x_t[:, 0, 0, 0], expected)
    torch.testing.assert_close(schedule.q_sample(x0, CLEAN, noise), x0)


def test_x0_and_eps_predictions_invert_q_sample(schedule: DiffusionSchedule) -> None:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 2, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([5, 400, 900])
    x_t = schedule.q_sample(x0, t, noise)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, noise), x0)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, x0), noise)


def test_ddim_eta0_with_true_noise_lands_on_q_sample(schedule: DiffusionSchedule) -> None:
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 2, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(1, 2, 8, 8, generator=generator, dtype=torch.float64)
    x_t = schedule.q_sample(x0, 700, noise)
    x_prev = schedule.ddim_step(x_t, noise, 700, 300, eta=0.0)
    torch.testing.assert_close(x_prev, schedule.q_sample(x0, 300, noise))
    torch.testing.assert_close(schedule.ddim_step(x_t, noise, 700, CLEAN), x0)


def test_ddim_reverse_step_inverts_ddim_step_for_fixed_eps(schedule: DiffusionSchedule) -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 2, 8, 8, generator=generator, dtype=torch.float64)
    encoded = schedule.ddim_reverse_step(x, eps, 100, 600)
    torch.testing.assert_close(schedule.ddim_step(encoded, eps, 600, 100), x)


def test_ddpm_step_has_posterior_mean_and_variance(schedule: DiffusionSchedule) -> None:
    """Against Ho et al. eq. 7 for consecutive steps (beta_t = 1 - abar_t / abar_{t-1})."""
    t, t_prev = 500, 499
    x0 = torch.full((1, 2, 4, 4), 0.5, dtype=torch.float64)
    x_t = torch.full((1, 2, 4, 4), 0.2, dtype=torch.float64)
    eps = schedule.predict_eps(x_t, t, x0)
    abar_t, abar_prev = schedule.alpha_bars[t], schedule.alpha_bars[t_prev]
    beta = 1 - abar_t / abar_prev
    mean = (
        abar_prev.sqrt() * beta / (1 - abar_t) * 0.5
        + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t) * 0.2
    )
    std = (beta * (1 - abar_prev) / (1 - abar_t)).sqrt()
    zero = schedule.ddpm_step(x_t, eps, t, t_prev, torch.zeros_like(x_t))
    one = schedule.ddpm_step(x_t, eps, t, t_prev, torch.ones_like(x_t))
    torch.testing.assert_close(zero, torch.full_like(x_t, mean.item()))
    torch.testing.assert_close(one - zero, torch.full_like(x_t, std.item()))
    torch.testing.assert_close(schedule.ddpm_step(x_t, eps, t, CLEAN, None), x0)


def test_ddim_eta1_matches_ddpm_variance(schedule: DiffusionSchedule) -> None:
    x_t = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    eps = torch.zeros_like(x_t)
    ones = torch.ones_like(x_t)
    ddim = schedule.ddim_step(x_t, eps, 600, 550, eta=1.0, noise=ones)
    ddpm = schedule.ddpm_step(x_t, eps, 600, 550, noise=ones)
    torch.testing.assert_close(ddim, ddpm)


def test_steps_follow_the_tensor_dtype_and_device(schedule: DiffusionSchedule) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.ones(1, 2, 4, 4, dtype=dtype)
        assert schedule.ddim_step(x, x, 10, 5).dtype == dtype
        assert schedule.q_sample(x, torch.tensor([3]), x).dtype == dtype


def test_schedule_round_trips_through_its_description(schedule: DiffusionSchedule) -> None:
    rebuilt = DiffusionSchedule.from_dict(schedule.to_dict())
    assert torch.equal(rebuilt.alpha_bars, schedule.alpha_bars)
    with pytest.raises(ValueError):
        DiffusionSchedule.from_dict({"name": "linear", "num_timesteps": 1000})
