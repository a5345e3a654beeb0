"""Synthetic head slices: deterministic, normalised, complex, head-shaped, training-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.recon.data.contrast import CSF, GM, WM, random_tissue_contrast, remap_intensity
from services.recon.data.splits import TRAINING_SOURCES
from services.recon.data.synthesis import (
    RECIPES,
    SliceVariations,
    example_mosaic,
    head_fraction,
    synthesize_head_slice,
    synthesize_head_slice_with_info,
)
from services.recon.errors import InputError


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_same_seed_same_slice_other_seed_other_slice() -> None:
    a = synthesize_head_slice(np.random.default_rng([1, 2]), size=64, pixel_mm=4.0)
    b = synthesize_head_slice(np.random.default_rng([1, 2]), size=64, pixel_mm=4.0)
    c = synthesize_head_slice(np.random.default_rng([1, 3]), size=64, pixel_mm=4.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("size", "pixel_mm"), [(64, 4.0), (32, 2.0), (64, 1.0)])
def test_shape_dtype_and_normalisation(size: int, pixel_mm: float) -> None:
    for index in range(3):
        made = synthesize_head_slice_with_info(np.random.default_rng([7, index]), size, pixel_mm)
        image = made.image
        assert image.shape == (size, size) and image.dtype == np.complex64
        assert np.isclose(np.percentile(np.abs(image), 99), 1.0, rtol=1e-3)
        assert np.abs(image.imag).max() > 0.05  # a phase, not a real image
        assert set(made.sources) <= set(TRAINING_SOURCES)
        assert made.pixel_mm == pixel_mm


def test_whole_head_slices_have_a_head_and_background() -> None:
    for index in range(4):
        magnitude = np.abs(synthesize_head_slice(np.random.default_rng([11, index]), 64, 4.0))
        fraction = head_fraction(magnitude)
        assert 0.06 <= fraction <= 0.95
        corners = np.concatenate([magnitude[:4, :4].ravel(), magnitude[-4:, -4:].ravel()])
        assert np.median(corners) < 0.3  # air around the head is dark (noise only)


def test_every_recipe_uses_training_sources_only() -> None:
    for recipe in RECIPES:
        assert set(recipe.sources) <= set(TRAINING_SOURCES)
        assert not any("single_subj" in source for source in recipe.sources)


def test_inverting_remap_makes_csf_bright() -> None:
    rng = np.random.default_rng(0)
    levels = np.array([0.6, 0.85, 0.2, 0.1, 0.7, 0.0], dtype=np.float32)  # a T1 template
    contrast = random_tissue_contrast(rng)
    while contrast.family != "t2":
        contrast = random_tissue_contrast(rng)
    values = np.array([0.0, 0.2, 0.6, 0.85])  # air, CSF, GM, WM
    remapped = remap_intensity(values, levels, contrast)
    assert remapped[0] == 0.0
    assert remapped[1] > remapped[2] > remapped[3]


def test_bad_geometry_is_an_input_error() -> None:
    with pytest.raises(InputError):
        synthesize_head_slice(np.random.default_rng(0), size=4)


def test_mosaic_tiles_slices() -> None:
    mosaic = example_mosaic(seed=0, rows=1, cols=2, size=32, pixel_mm=4.0)
    assert mosaic.shape == (32, 64)
    first = np.abs(synthesize_head_slice(np.random.default_rng([0, 0]), 32, 4.0))
    np.testing.assert_allclose(mosaic[:, :32], first, rtol=1e-6)


def test_dwi_probability_zero_draws_nothing_extra_and_one_gives_b0_contrast() -> None:
    plain = synthesize_head_slice_with_info(np.random.default_rng([4, 0]), 32, 2.0)
    again = synthesize_head_slice_with_info(
        np.random.default_rng([4, 0]), 32, 2.0, SliceVariations(dwi_probability=0.0)
    )
    np.testing.assert_array_equal(plain.image, again.image)
    b0_contrast = SliceVariations(dwi_probability=1.0)
    made = [
        synthesize_head_slice_with_info(np.random.default_rng([4, i]), 32, 2.0, b0_contrast)
        for i in range(4)
    ]
    assert {m.contrast for m in made} == {"dwi_b0"}
    with pytest.raises(InputError, match="dwi_probability"):
        SliceVariations(dwi_probability=-0.5)


def test_dwi_b0_contrast_puts_tissue_far_below_csf() -> None:
    for seed in range(20):
        contrast = random_tissue_contrast(np.random.default_rng(seed), dwi_probability=1.0)
        levels = contrast.intensities
        assert contrast.family == "dwi_b0"
        assert levels[WM] < levels[GM] < 0.45 * levels[CSF]
