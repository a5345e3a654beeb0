from __future__ import annotations

import pytest

from services.bench.recon import DIFFUSION_VARIANTS, with_overrides
from services.cli import main
from services.recon.engine import ReconOptions


def test_overrides_reach_only_the_diffusion_variants_they_apply_to() -> None:
    cold, warm, full = (
        DIFFUSION_VARIANTS[name] for name in ("diffusion", "diffusion-warm", "diffusion-full")
    )
    changed = with_overrides(
        cold, warm_start=200, steps=23, start_step=900, samples=16, consistency="estimate"
    )
    assert (changed.samples, changed.steps, changed.start_step) == (16, 23, 900)
    assert changed.consistency == "estimate"
    assert changed.warm_start is None  # a cold start stays cold
    assert with_overrides(warm, warm_start=200).warm_start == 200
    assert (
        with_overrides(full, steps=23).steps == full.steps
    )  # the full schedule has no coarse steps
    assert with_overrides(full, samples=16).samples == 16
    baseline = ReconOptions(method="cs-tv", lam=0.01)
    assert (
        with_overrides(baseline, warm_start=200, steps=23, start_step=900, samples=16) == baseline
    )
    assert with_overrides(cold) == cold


def test_an_unknown_consistency_mode_exits_2_before_any_slice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "recon", "--consistency", "exact"])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(message.splitlines()) == 1
    assert "consistency" in message
