"""Cortical folds: thin lines, kept to the cortex, class sums preserved, opt-in and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from services.recon.data.contrast import CSF, GM, WM
from services.recon.data.folds import sulcal_lines, with_cortical_folds
from services.recon.data.synthesis import SliceVariations, synthesize_head_slice_with_info
from services.recon.errors import InputError


def disc_brain(size: int = 96, radius: float = 36.0) -> np.ndarray:
    """Probabilities (size, size, 6): a white-matter disc inside a grey ring, CSF elsewhere."""
    rows, cols = np.mgrid[:size, :size] - size / 2
    distance = np.hypot(rows, cols)
    probabilities = np.zeros((size, size, 6), dtype=np.float32)
    probabilities[..., WM] = distance < radius - 6
    probabilities[..., GM] = (distance >= radius - 6) & (distance < radius)
    probabilities[..., CSF] = distance >= radius
    return probabilities


def test_lines_are_thin_and_seeded() -> None:
    a = sulcal_lines(np.random.default_rng(0), (96, 96), pixel_mm=2.0)
    b = sulcal_lines(np.random.default_rng(0), (96, 96), pixel_mm=2.0)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    on_a_line = float(np.mean(a > 0.5))
    assert 0.03 < on_a_line < 0.4  # lines, neither nothing nor everywhere


def test_folds_move_grey_matter_to_csf_in_the_cortex_only() -> None:
    probabilities = disc_brain()
    folded = with_cortical_folds(probabilities, np.random.default_rng(3), pixel_mm=2.0)
    np.testing.assert_allclose(folded.sum(axis=-1), probabilities.sum(axis=-1), atol=1e-6)
    np.testing.assert_array_equal(folded[..., WM], probabilities[..., WM])
    moved = probabilities[..., GM] - folded[..., GM]
    assert moved.min() >= 0.0 and moved.max() > 0.4
    np.testing.assert_allclose(folded[..., CSF] - probabilities[..., CSF], moved, atol=1e-6)
    assert 0.05 < moved.sum() / probabilities[..., GM].sum() < 0.6


def test_fold_probability_zero_leaves_slices_as_before_and_one_folds_tissue_recipes() -> None:
    plain = synthesize_head_slice_with_info(np.random.default_rng([4, 0]), 64, 2.0)
    again = synthesize_head_slice_with_info(
        np.random.default_rng([4, 0]), 64, 2.0, SliceVariations(fold_probability=0.0)
    )
    np.testing.assert_array_equal(plain.image, again.image)
    assert not plain.folded
    always = SliceVariations(fold_probability=1.0)
    made = [
        synthesize_head_slice_with_info(np.random.default_rng([4, i]), 64, 2.0, always)
        for i in range(12)
    ]
    assert any(m.folded for m in made)
    assert all(m.folded == m.recipe.endswith("_tissues") for m in made)


def test_fold_probability_outside_zero_one_is_an_input_error() -> None:
    with pytest.raises(InputError, match="fold_probability"):
        SliceVariations(fold_probability=1.5)
