"""Healthy look-alike blobs: the same in every image, clear of the lesion, brain intensities."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from services.recon.data.lesions import brain_region, head_mask, insert_lesion
from services.recon.data.tissue_blobs import BlobRanges, paint_tissue_blobs
from tests.unit.test_lesions import head_phantom


def lesion_pair(size: int = 128, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    healthy = head_phantom(size).astype(np.float64)
    lesioned = insert_lesion(healthy, seed)
    return np.stack([healthy, lesioned.image]), lesioned.lesion_mask


def test_blobs_are_painted_alike_into_every_image_and_keep_clear_of_the_lesion() -> None:
    pair, lesion = lesion_pair()
    painted = paint_tissue_blobs(pair, lesion, np.random.default_rng(4))
    assert painted.shape == pair.shape and painted.dtype == np.float32
    changed = np.abs(painted - pair.astype(np.float32))
    assert changed[0].max() > 0, "some blob was painted"
    np.testing.assert_allclose(changed[0], changed[1], atol=1e-5)
    clearance = ndimage.binary_dilation(lesion, iterations=BlobRanges().clearance_px)
    assert changed[:, clearance].max() == 0
    # The pair still differs only by the lesion: blobs never add a difference.
    before = np.abs(pair[0] - pair[1])
    assert np.all(np.abs(painted[0] - painted[1]) <= before + 1e-5)


def test_blob_intensities_are_the_brains_own_and_the_draw_is_deterministic() -> None:
    pair, lesion = lesion_pair()
    first = paint_tissue_blobs(pair, lesion, np.random.default_rng(9))
    again = paint_tissue_blobs(pair, lesion, np.random.default_rng(9))
    other = paint_tissue_blobs(pair, lesion, np.random.default_rng(10))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    healthy = pair[0]
    brain = brain_region(healthy, head_mask(healthy))
    low, high = np.quantile(healthy[brain], [0.05, 0.95])
    moved = np.abs(first[0] - healthy) > 1e-6
    # Blending toward a level in [low, high] never leaves the span of the old value and it.
    assert np.all(first[0][moved] >= min(low, healthy[moved].min()) - 1e-5)
    assert np.all(first[0][moved] <= max(high, healthy[moved].max()) + 1e-5)
    assert not moved[~brain].any(), "blobs stay inside the brain"


def test_a_slice_without_brain_is_returned_unchanged() -> None:
    empty = np.zeros((2, 64, 64))
    out = paint_tissue_blobs(empty, np.zeros((64, 64), bool), np.random.default_rng(0))
    np.testing.assert_array_equal(out, empty)
