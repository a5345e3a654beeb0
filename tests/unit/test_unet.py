"""The denoiser network: shapes, sizes, padding and config round trips."""

from __future__ import annotations

import pytest
import torch

from services.recon.unet import (
    UNet,
    UNetConfig,
    count_parameters,
    crop_to,
    pad_to_multiple,
    timestep_embedding,
)

TINY = UNetConfig(channels=(8, 16), norm_groups=4, time_embedding_dim=16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_default_network_has_a_few_million_parameters() -> None:
    parameters = count_parameters(UNet())
    assert 2_000_000 < parameters < 6_000_000


@pytest.mark.parametrize("shape", [(16, 16), (24, 40), (32, 8)])
def test_output_matches_input_for_any_size_divisible_by_the_multiple(
    shape: tuple[int, int],
) -> None:
    config = UNetConfig(channels=(8, 16, 16, 24), norm_groups=4, time_embedding_dim=16)
    assert config.size_multiple == 8
    model = UNet(config)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 2, *shape)
    eps = model(x, torch.tensor([0, 999]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_attention_at_the_coarsest_scale_keeps_shapes() -> None:
    model = UNet(UNetConfig(channels=(8, 16), norm_groups=4, attention_at_coarsest=True))
    x = torch.randn(1, 2, 16, 16)
    assert model(x, torch.tensor([10])).shape == x.shape


def test_zero_initialised_head_predicts_zero_noise_at_start() -> None:
    model = UNet(TINY)
    assert torch.count_nonzero(model(torch.randn(1, 2, 16, 16), torch.tensor([5]))) == 0


def test_sizes_not_divisible_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="pad_to_multiple"):
        UNet(TINY)(torch.randn(1, 2, 15, 16), torch.tensor([0]))


def test_pad_and_crop_round_trip() -> None:
    x = torch.randn(1, 2, 13, 22)
    padded, offset = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 24)
    assert torch.equal(crop_to(padded, offset, (13, 22)), x)
    same, none = pad_to_multiple(torch.ones(1, 2, 8, 8), 8)
    assert none == (0, 0) and same.shape == (1, 2, 8, 8)


def test_timestep_embedding_distinguishes_steps() -> None:
    embedding = timestep_embedding(torch.tensor([0, 1, 500]), 32)
    assert embedding.shape == (3, 32)
    assert not torch.allclose(embedding[0], embedding[1])
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    config = UNetConfig(channels=(8, 16, 32), attention_at_coarsest=True)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"channels": [8], "depth": 3})


def test_channels_last_and_bf16_autocast_agree_with_float32() -> None:
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        reference = model(x, t)
        fast_model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_model(x.contiguous(memory_format=torch.channels_last), t).float()
    relative = (fast - reference).norm() / reference.norm()
    assert relative < 0.05
