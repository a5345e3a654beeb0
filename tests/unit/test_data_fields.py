"""Smooth random fields are deterministic, smooth and scaled as documented."""

from __future__ import annotations

import numpy as np

from services.recon.data.fields import (
    bias_field,
    coarse_grid_field,
    low_order_field,
    smooth_phase,
    texture_field,
)


def test_fields_are_deterministic_given_the_generator() -> None:
    for make in (
        lambda rng: bias_field(rng, (32, 32), 0.2),
        lambda rng: smooth_phase(rng, (32, 32), 2.0),
        lambda rng: coarse_grid_field(rng, (32, 32), 5, 3.0),
        lambda rng: texture_field(rng, (32, 32), 1.0),
    ):
        a = make(np.random.default_rng(3))
        b = make(np.random.default_rng(3))
        c = make(np.random.default_rng(4))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.shape == (32, 32) and a.dtype == np.float32


def test_low_order_field_has_the_requested_std_and_is_smooth() -> None:
    field = low_order_field(np.random.default_rng(0), (64, 64), order=3, amplitude=0.5)
    assert np.isclose(field.std(), 0.5, rtol=1e-4)
    assert np.abs(np.diff(field, axis=0)).max() < 0.2


def test_bias_is_positive_and_texture_is_unit_variance() -> None:
    rng = np.random.default_rng(1)
    assert (bias_field(rng, (32, 32), 0.3) > 0).all()
    texture = texture_field(rng, (64, 64), 2.0)
    assert np.isclose(texture.std(), 1.0, rtol=1e-3) and abs(texture.mean()) < 1e-5
