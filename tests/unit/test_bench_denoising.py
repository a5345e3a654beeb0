"""`mrdiff bench denoising`: clean-image error by noise level, on a tiny random prior."""

from __future__ import annotations

import math

import pytest
import torch

from services.bench.denoising import baseline_rows, denoising_errors
from services.cli import main
from services.recon.prior import LoadedPrior


def images(count: int = 5, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn((count, 2, size, size), generator=generator) * 0.3


def test_errors_are_finite_non_negative_and_repeatable(tiny_prior: LoadedPrior) -> None:
    x0 = images()
    first = denoising_errors(tiny_prior, x0, [0, 50, 99], seed=1, batch=2)
    again = denoising_errors(tiny_prior, x0, [0, 50, 99], seed=1, batch=4)
    assert set(first) == {0, 50, 99}
    assert all(math.isfinite(v) and v >= 0 for v in first.values())
    for t in first:
        assert math.isclose(first[t], again[t], rel_tol=1e-4)


def test_baselines_ignore_the_noise_level() -> None:
    x0 = images()
    zero, mean = baseline_rows(x0, [10, 90])
    assert zero.mse_by_t[10] == zero.mse_by_t[90] == float(x0.square().mean())
    centred = x0 - x0.mean(dim=0, keepdim=True)
    assert math.isclose(mean.mse_by_t[10], float(centred.square().mean()), rel_tol=1e-6)
    assert mean.mse_by_t[10] <= zero.mse_by_t[10]


@pytest.mark.parametrize(
    ("timesteps", "word"), [("4x0", "bad timesteps"), ("100,5000", "[0, 999]")]
)
def test_bad_timesteps_exit_2_with_one_line(
    timesteps: str, word: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "denoising", "--slices", "2", "--timesteps", timesteps])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and word in message, message
