"""Synthetic lesions: deterministic, exact masks, phase kept, sizes and families as specified."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from services.recon.data.lesions import (
    HELD_OUT_FAMILY,
    TRAINING_FAMILY,
    brain_region,
    head_mask,
    insert_lesion,
    magnitude_of,
    size_category,
)
from services.recon.errors import InputError


def head_phantom(size: int = 64) -> np.ndarray:
    """A head-like magnitude: bright scalp ring, darker skull gap, textured brain, ventricles."""
    rows, cols = np.mgrid[0:size, 0:size] / (size / 2.0) - 1.0
    radius = np.hypot(rows / 0.9, cols / 0.75)
    image = np.where(radius < 0.95, 0.9, 0.0)
    image = np.where(radius < 0.85, 0.15, image)
    image = np.where(radius < 0.78, 0.6, image)
    image = np.where(np.hypot((rows + 0.1) / 0.25, (np.abs(cols) - 0.15) / 0.08) < 1, 1.0, image)
    texture = ndimage.gaussian_filter(np.random.default_rng(7).standard_normal((size, size)), 2)
    return (image * (1 + 0.05 * texture)).astype(np.float32)


def test_same_seed_same_lesion_and_different_seeds_differ() -> None:
    image = head_phantom()
    first = insert_lesion(image, seed=3)
    again = insert_lesion(image, seed=3)
    other = insert_lesion(image, seed=4)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.lesion_mask, again.lesion_mask)
    assert first.params == again.params
    assert not np.array_equal(first.image, other.image)


def test_mask_marks_the_changed_pixels_inside_the_brain() -> None:
    image = head_phantom(128)
    brain = brain_region(image, head_mask(image))
    for seed in range(12):
        result = insert_lesion(image, seed=seed)
        mask = result.lesion_mask
        assert mask.any() and result.image.shape == image.shape
        assert not (mask & ~brain).any(), "lesion leaks out of the brain"
        change = np.abs(result.image.astype(np.float64) - image)
        # Inside the mask the lesion sets the value; outside only a soft edge a few pixels wide.
        assert change[mask].mean() > 0.1 * float(np.median(image[brain]))
        far = ndimage.distance_transform_edt(~mask) > 8
        assert change[far].max() < 1e-3


def test_phase_is_kept_for_complex_and_two_channel_input() -> None:
    magnitude = head_phantom()
    rows, cols = np.mgrid[0:64, 0:64] / 64.0
    phase = 0.8 * rows - 0.5 * cols
    complex_image = (magnitude * np.exp(1j * phase)).astype(np.complex64)
    two_channel = np.stack([complex_image.real, complex_image.imag]).astype(np.float32)
    lesioned_complex = insert_lesion(complex_image, seed=1)
    lesioned_channels = insert_lesion(two_channel, seed=1)
    np.testing.assert_array_equal(lesioned_complex.lesion_mask, lesioned_channels.lesion_mask)
    inside = magnitude_of(lesioned_complex.image) > 1e-3
    np.testing.assert_allclose(np.angle(lesioned_complex.image)[inside], phase[inside], atol=1e-4)
    as_complex = lesioned_channels.image[0] + 1j * lesioned_channels.image[1]
    np.testing.assert_allclose(as_complex, lesioned_complex.image, atol=1e-5)
    assert lesioned_channels.image.dtype == np.float32


def test_sizes_span_small_medium_large_and_both_polarities() -> None:
    image = head_phantom(128)
    results = [insert_lesion(image, seed=s) for s in range(60)]
    categories = {size_category(r.lesion_mask.sum(), image.shape) for r in results}
    assert categories == {"small", "medium", "large"}
    brain_area = brain_region(image, head_mask(image)).sum()
    assert max(r.lesion_mask.sum() for r in results) <= 0.3 * brain_area
    assert {r.params.hyperintense for r in results} == {True, False}
    assert any(r.params.oedema_width > 0 for r in results)
    assert any(r.params.oedema_width == 0 for r in results)


def test_hyper_and_hypo_lesions_move_intensity_the_right_way() -> None:
    image = head_phantom(128)
    for seed in range(20):
        result = insert_lesion(image, seed=seed)
        if result.params.oedema_width > 0 or result.lesion_mask.sum() < 30:
            continue
        delta = float((result.image - image)[result.lesion_mask].mean())
        assert (delta > 0) == result.params.hyperintense


def test_held_out_family_shares_no_parameter_range_with_training() -> None:
    def disjoint(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[1] <= b[0] or b[1] <= a[0]

    assert disjoint(TRAINING_FAMILY.hyper_contrast, HELD_OUT_FAMILY.hyper_contrast)
    assert disjoint(TRAINING_FAMILY.hypo_contrast, HELD_OUT_FAMILY.hypo_contrast)
    assert disjoint(TRAINING_FAMILY.oedema_width, HELD_OUT_FAMILY.oedema_width)
    assert not set(TRAINING_FAMILY.outlines) & set(HELD_OUT_FAMILY.outlines)
    image = head_phantom(128)
    held_out = [insert_lesion(image, seed=s, family=HELD_OUT_FAMILY) for s in range(10)]
    assert all(r.params.family == "held-out" for r in held_out)
    assert all(r.params.outline in HELD_OUT_FAMILY.outlines for r in held_out)


def test_size_bins_follow_the_issue_at_128_and_scale_with_matrix() -> None:
    assert size_category(49, (128, 128)) == "small"
    assert size_category(50, (128, 128)) == "medium"
    assert size_category(300, (128, 128)) == "large"
    assert size_category(4 * 49, (256, 256)) == "small"


def test_bad_input_raises_input_error() -> None:
    with pytest.raises(InputError, match="too little brain"):
        insert_lesion(np.zeros((64, 64), np.float32) + np.eye(64, dtype=np.float32), seed=0)
    with pytest.raises(InputError, match="shape"):
        insert_lesion(np.zeros((3, 8, 8), np.float32), seed=0)
    with pytest.raises(InputError, match="NaN"):
        insert_lesion(np.full((64, 64), np.nan, np.float32), seed=0)
