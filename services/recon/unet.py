"""The denoiser: a fully convolutional UNet that predicts the noise of a complex image.

Input and output have 2 channels (real, imaginary). The design follows the UNet of
Ho et al. (DDPM, NeurIPS 2020) as simplified in guided-diffusion (Dhariwal & Nichol 2021):
residual blocks with GroupNorm + SiLU, a sinusoidal timestep embedding added inside each block,
strided-convolution downsampling and nearest-neighbour upsampling with skip connections.
There is no attention except, optionally, one self-attention block at the coarsest scale, so a
model trained on crops applies to any matrix size (H and W divisible by
:attr:`UNetConfig.size_multiple`; :func:`pad_to_multiple` pads other sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConfigT = TypeVar("ConfigT")


def config_to_dict(config: Any) -> dict[str, Any]:
    """An architecture dataclass as plain values (``channels`` as a list), for saved files."""
    spec: dict[str, Any] = asdict(config)
    spec["channels"] = list(config.channels)
    return spec


def config_from_dict(cls: type[ConfigT], spec: dict[str, Any], name: str) -> ConfigT:
    """Rebuild an architecture dataclass ``cls`` from :func:`config_to_dict`'s output.

    Unknown keys are a ``ValueError`` (naming the ``name`` config); missing keys take defaults.
    """
    known = {f.name for f in fields(cast(Any, cls))}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown {name} keys: {sorted(unknown)}")
    values = dict(spec)
    if "channels" in values:
        values["channels"] = tuple(int(c) for c in values["channels"])
    return cls(**values)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; saved in checkpoints and exported weights."""

    in_channels: int = 2
    out_channels: int = 2
    channels: tuple[int, ...] = (24, 48, 96, 128)
    blocks_per_level: int = 1
    attention_at_coarsest: bool = False
    norm_groups: int = 8
    dropout: float = 0.0
    time_embedding_dim: int = 128

    @property
    def size_multiple(self) -> int:
        """H and W must be divisible by this (one halving per level below the top)."""
        return int(2 ** (len(self.channels) - 1))

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> UNetConfig:
        return config_from_dict(cls, spec, "UNet config")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape ``(B, dim)``."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_init(conv: nn.Conv2d) -> None:
    """Zero a convolution so its residual branch starts as the identity (guided-diffusion)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the time embedding added in between (DDPM style)."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        zero_init(self.conv2)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(time)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels; only used at the coarsest scale."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        zero_init(self.out)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )[:, 0]
        return x + self.out(attended.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Epsilon-predicting UNet for 2-channel (real/imag) images; see module docstring."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        cfg = self.config
        time_dim = cfg.time_embedding_dim
        base = cfg.channels[0]
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        def block(i: int, o: int) -> ResidualBlock:
            return ResidualBlock(i, o, time_dim, cfg.norm_groups, cfg.dropout)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_channels = [base]
        current = base
        for level, width in enumerate(cfg.channels):
            level_blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                level_blocks.append(block(current, width))
                current = width
                skip_channels.append(current)
            self.down_blocks.append(level_blocks)
            if level < len(cfg.channels) - 1:
                self.downsamples.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
                skip_channels.append(current)

        self.mid1 = block(current, current)
        self.mid_attention: nn.Module = (
            SelfAttention(current, cfg.norm_groups) if cfg.attention_at_coarsest else nn.Identity()
        )
        self.mid2 = block(current, current)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level, width in reversed(list(enumerate(cfg.channels))):
            level_blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level + 1):
                level_blocks.append(block(current + skip_channels.pop(), width))
                current = width
            self.up_blocks.append(level_blocks)
            if level > 0:
                self.upsamples.append(nn.Conv2d(current, current, 3, padding=1))

        self.head_norm = nn.GroupNorm(cfg.norm_groups, current)
        self.head = nn.Conv2d(current, cfg.out_channels, 3, padding=1)
        zero_init(self.head)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict the noise in ``x`` (B, 2, H, W) at timesteps ``t`` (B,)."""
        multiple = self.config.size_multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"UNet input {tuple(x.shape[-2:])} must be divisible by {multiple}; "
                "use pad_to_multiple"
            )
        time = self.time_mlp(timestep_embedding(t, self.config.channels[0]))
        h = self.stem(x)
        skips = [h]
        for level, level_blocks in enumerate(self.down_blocks):
            for res in cast(nn.ModuleList, level_blocks):
                h = res(h, time)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, time)), time)
        for level, level_blocks in enumerate(self.up_blocks):
            for res in cast(nn.ModuleList, level_blocks):
                h = res(torch.cat([h, skips.pop()], dim=1), time)
            if level < len(self.upsamples):
                h = self.upsamples[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(F.silu(self.head_norm(h)))


def to_device(model: UNet, device: torch.device | str) -> UNet:
    """Move ``model`` to ``device`` with channels_last weights (faster convolutions on CPU)."""
    moved: UNet = cast(Any, model).to(device=device, memory_format=torch.channels_last)
    return moved


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad the last two axes up to a multiple, centred; returns the pad sizes (before) too.

    Use :func:`crop_to` with the original shape to undo it.
    """
    height, width = x.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if not pad_h and not pad_w:
        return x, (0, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(x, (left, pad_w - left, top, pad_h - top))
    return padded, (top, left)


def crop_to(x: Tensor, offset: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pad_to_multiple`: cut ``shape`` out of ``x`` at ``offset``."""
    top, left = offset
    return x[..., top : top + shape[0], left : left + shape[1]]
