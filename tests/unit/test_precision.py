from __future__ import annotations

import torch

from services.recon.precision import bf16_autocast, native_bf16, precision_name


def _matmul_dtype(allowed: bool) -> torch.dtype:
    a = torch.randn(4, 4)
    with bf16_autocast(torch.device("cpu"), allowed):
        return (a @ a).dtype


def test_bf16_runs_only_where_allowed_and_native() -> None:
    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16("cpu") == native
    assert _matmul_dtype(allowed=False) == torch.float32
    assert _matmul_dtype(allowed=True) == (torch.bfloat16 if native else torch.float32)
    assert precision_name(cpu, allowed=False) == "float32"
    assert precision_name(cpu) == ("bf16" if native else "float32")
    assert not native_bf16("meta")
