from __future__ import annotations

from services.bench.recon import DIFFUSION_VARIANTS, with_overrides
from services.recon.engine import ReconOptions


def test_overrides_reach_only_the_diffusion_variants_they_apply_to() -> None:
    cold, warm, full = (
        DIFFUSION_VARIANTS[name] for name in ("diffusion", "diffusion-warm", "diffusion-full")
    )
    changed = with_overrides(cold, warm_start=200, steps=23, start_step=900, samples=16)
    assert (changed.samples, changed.steps, changed.start_step) == (16, 23, 900)
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
