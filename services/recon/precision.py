"""bf16 autocast where the hardware computes bf16 natively, float32 everywhere else.

With channels_last, bf16 autocast made the UNet about 5x faster than float32 on a CPU with
AVX512-BF16 (design.md). A CPU without AVX512-BF16 or AMX has no bf16 arithmetic: PyTorch
converts every operand and the same forward pass is about 1.6x *slower* than float32 (measured
on a Xeon with AVX512 but no AVX512-BF16, BENCHMARKS.md "Session 9"). So a caller's ``bf16=True``
means "bf16 allowed", and :func:`bf16_autocast` uses it only where it is native.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

_CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """True when ``device_type`` ("cpu", "cuda", ...) computes bf16 natively."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        probes: list[Callable[[], bool]] = [
            getattr(torch.cpu, name) for name in _CPU_BF16_PROBES if hasattr(torch.cpu, name)
        ]
        return any(probe() for probe in probes)
    return False


def bf16_autocast(
    device: torch.device, allowed: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``allowed`` and native there, else a no-op context."""
    if allowed and native_bf16(device.type):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: torch.device, allowed: bool = True) -> str:
    """What :func:`bf16_autocast` runs with on ``device``: "bf16" or "float32"."""
    return "bf16" if allowed and native_bf16(device.type) else "float32"
