"""Benchmark splits: disjoint by source volume; evaluation = real scans nothing trains on."""

from __future__ import annotations

import numpy as np
import pytest

from services.recon.data.splits import (
    EVALUATION_SOURCES,
    SOURCE_TABLE,
    SPLIT_TABLE_MARKDOWN,
    TRAINING_SOURCES,
    VALIDATION_SOURCES,
    load_split,
    place_in_field_of_view,
    resample_slice,
)
from services.recon.data.synthesis import RECIPES
from services.recon.errors import InputError


def test_splits_are_disjoint_by_source_and_by_file() -> None:
    train, val, test = set(TRAINING_SOURCES), set(VALIDATION_SOURCES), set(EVALUATION_SOURCES)
    assert train and val and test
    assert not train & val and not train & test and not val & test
    files = {e.split: set() for e in SOURCE_TABLE}
    for entry in SOURCE_TABLE:
        files[entry.split].add(entry.volume_id)
    assert not files["training"] & files["validation"]
    assert not files["training"] & files["evaluation"]
    assert not files["validation"] & files["evaluation"]


def test_no_real_scan_and_no_colin27_in_training() -> None:
    for entry in SOURCE_TABLE:
        if entry.split in ("training", "validation"):
            assert not entry.is_real_scan
            assert "single_subj" not in entry.volume_id
    colin = [e for e in SOURCE_TABLE if "single_subj_T1" in e.volume_id]
    assert [e.split for e in colin] == ["evaluation"]
    assert all(e.is_real_scan for e in SOURCE_TABLE if e.split == "evaluation")
    used = {source for recipe in RECIPES for source in recipe.sources}
    assert used <= set(TRAINING_SOURCES)


def test_markdown_table_lists_every_source() -> None:
    for entry in SOURCE_TABLE:
        assert entry.source in SPLIT_TABLE_MARKDOWN
    assert SPLIT_TABLE_MARKDOWN.count("\n") == len(SOURCE_TABLE) + 2


@pytest.mark.parametrize("name", ["validation", "evaluation"])
def test_load_split_is_deterministic_and_normalised(name: str) -> None:
    slices = load_split(name, size=64, pixel_mm=4.0, max_slices_per_volume=2)
    again = load_split(name, size=64, pixel_mm=4.0, max_slices_per_volume=2)
    expected = VALIDATION_SOURCES if name == "validation" else EVALUATION_SOURCES
    assert {s.source for s in slices} == set(expected)
    for first, second in zip(slices, again, strict=True):
        np.testing.assert_array_equal(first.image, second.image)
    for item in slices:
        assert item.image.shape == (64, 64) and item.image.dtype == np.float32
        assert np.isclose(np.percentile(item.image, 99), 1.0, rtol=1e-4)
        assert item.pixel_mm == 4.0
        assert item.is_real_scan == (name == "evaluation")
        assert (item.image > 0.1).mean() > 0.1  # enough head in the field of view
    assert max(sum(s.source == src for s in slices) for src in expected) <= 2


def test_load_split_rejects_bad_requests() -> None:
    with pytest.raises(InputError):
        load_split("training")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        load_split("evaluation", size=8)


def test_resample_and_place_keep_geometry() -> None:
    image = np.zeros((40, 20), dtype=np.float32)
    image[10:30, 5:15] = 1.0
    half = resample_slice(image, row_mm=1.0, col_mm=1.0, pixel_mm=2.0)
    assert half.shape == (20, 10)
    assert np.isclose(half.sum() * 4, image.sum(), rtol=0.05)
    placed = place_in_field_of_view(half, centre=(10.0, 5.0), size=32)
    assert placed.shape == (32, 32)
    rows, cols = np.nonzero(placed > 0.5)
    assert abs(rows.mean() - 16) <= 1 and abs(cols.mean() - 16) <= 1
