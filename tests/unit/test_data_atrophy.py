"""Atrophy: CSF spaces grow into the brain by the drawn distance; class sums kept; opt-in."""

from __future__ import annotations

import numpy as np
import pytest

from services.recon.data.atrophy import GROWTH_MM, grown_csf, with_atrophy
from services.recon.data.contrast import AIR, BONE, CSF, GM, WM
from services.recon.data.synthesis import SliceVariations, synthesize_head_slice_with_info
from services.recon.errors import InputError


def brain_with_ventricle(size: int = 96) -> np.ndarray:
    """Probabilities (size, size, 6): CSF ventricle in white matter, grey ring, CSF, bone, air."""
    rows, cols = np.mgrid[:size, :size] - size / 2
    distance = np.hypot(rows, cols)
    probabilities = np.zeros((size, size, 6), dtype=np.float32)
    probabilities[..., CSF] = (distance < 6) | ((distance >= 36) & (distance < 39))
    probabilities[..., WM] = (distance >= 6) & (distance < 30)
    probabilities[..., GM] = (distance >= 30) & (distance < 36)
    probabilities[..., BONE] = (distance >= 39) & (distance < 43)
    probabilities[..., AIR] = distance >= 43
    return probabilities


def test_csf_grows_by_the_distance_asked_with_a_partial_volume_edge() -> None:
    csf = np.zeros((1, 41), dtype=np.float32)
    csf[0, 20] = 1.0
    grown = grown_csf(csf, growth_mm=5.0, pixel_mm=2.0)
    np.testing.assert_allclose(grown[0, 18:23], 1.0)  # within 5 mm: 2 pixels either side
    assert grown[0, 17] == grown[0, 23] == pytest.approx(0.5)  # the edge, 6 mm out
    assert grown[0, 16] == 0.0 and np.all(grown >= csf)
    assert grown_csf(csf, 8.0, 2.0).sum() > grown.sum() > grown_csf(csf, 1.0, 2.0).sum()


def test_atrophy_turns_only_brain_into_csf_and_keeps_class_sums() -> None:
    probabilities = brain_with_ventricle()
    atrophic = with_atrophy(probabilities, np.random.default_rng(3), pixel_mm=2.0)
    np.testing.assert_allclose(atrophic.sum(axis=-1), probabilities.sum(axis=-1), atol=1e-6)
    for kept in (BONE, AIR):
        np.testing.assert_array_equal(atrophic[..., kept], probabilities[..., kept])
    gained = atrophic[..., CSF] - probabilities[..., CSF]
    lost = (probabilities[..., GM] + probabilities[..., WM]) - (
        atrophic[..., GM] + atrophic[..., WM]
    )
    assert gained.min() >= 0.0 and gained.max() > 0.2
    np.testing.assert_allclose(gained, lost, atol=1e-6)
    centre = probabilities.shape[0] // 2
    ventricle_before = np.sum(
        probabilities[..., CSF][centre - 20 : centre + 20, centre - 20 : centre + 20]
    )
    ventricle_after = np.sum(
        atrophic[..., CSF][centre - 20 : centre + 20, centre - 20 : centre + 20]
    )
    assert ventricle_after > ventricle_before  # the ventricle widened
    np.testing.assert_array_equal(
        atrophic, with_atrophy(probabilities, np.random.default_rng(3), pixel_mm=2.0)
    )


def test_larger_growth_moves_more_brain() -> None:
    probabilities = brain_with_ventricle()
    low, high = GROWTH_MM
    small = grown_csf(probabilities[..., CSF], low, 2.0)
    large = grown_csf(probabilities[..., CSF], high, 2.0)
    assert large.sum() > small.sum() > probabilities[..., CSF].sum()


def test_atrophy_probability_zero_leaves_slices_as_before_and_one_marks_tissue_recipes() -> None:
    plain = synthesize_head_slice_with_info(np.random.default_rng([4, 0]), 64, 2.0)
    again = synthesize_head_slice_with_info(
        np.random.default_rng([4, 0]), 64, 2.0, SliceVariations(atrophy_probability=0.0)
    )
    np.testing.assert_array_equal(plain.image, again.image)
    assert not plain.atrophic
    always = SliceVariations(atrophy_probability=1.0)
    made = [
        synthesize_head_slice_with_info(np.random.default_rng([4, i]), 64, 2.0, always)
        for i in range(12)
    ]
    assert any(m.atrophic for m in made)
    assert all(m.atrophic == m.recipe.endswith("_tissues") for m in made)
    with pytest.raises(InputError, match="atrophy_probability"):
        SliceVariations(atrophy_probability=1.5)
