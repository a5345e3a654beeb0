"""`mrdiff bench speed`: the timed inputs have the case's shape and every slice is timed."""

from __future__ import annotations

import numpy as np

from services.bench.speed import SPEED_CASES, SpeedCase, bench_speed, case_inputs
from services.recon.engine import ReconEngine, ReconOptions
from services.recon.prior import LoadedPrior


def test_case_inputs_have_the_cases_matrix_coils_and_acceleration() -> None:
    shapes = {case.name: case_inputs(case, slices=2)[0][0].shape for case in SPEED_CASES}
    assert shapes["128 single-coil"] == (1, 128, 128)
    assert shapes["256 single-coil"] == (1, 256, 256)
    assert shapes["128 8-coil"] == (8, 128, 128)
    kspace, mask = case_inputs(SPEED_CASES[0], slices=1)[0]
    assert kspace.dtype == np.complex64 and mask.dtype == bool
    assert 3.5 < mask.size / mask.sum() < 4.5


def test_every_slice_of_every_case_is_timed(tiny_prior: LoadedPrior) -> None:
    engine = ReconEngine.from_prior(tiny_prior)
    cases = [SpeedCase("96 single-coil", 96, 2.7, 1), SpeedCase("96 2-coil", 96, 2.7, 2)]
    timed: list[None] = []
    rows = bench_speed(
        engine,
        cases,
        slices=2,
        options=ReconOptions(samples=2, steps=2, refine_steps=1),
        on_slice=lambda: timed.append(None),
    )
    assert [row.case for row in rows] == cases
    assert all(len(row.seconds) == 2 and min(row.seconds) > 0 for row in rows)
    assert len(timed) == 4 and rows[-1].peak_rss_mb > 0
