"""Slice banks: deterministic shards, manifest provenance, atomic builds, augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.recon.data.bank import (
    SliceBank,
    augment_complex_slice,
    build_bank,
    indices_at_pixel_sizes,
    read_manifest,
    slice_generator,
)
from services.recon.data.splits import EVALUATION_SOURCES, TRAINING_SOURCES, VALIDATION_SOURCES
from services.recon.data.synthesis import SliceVariations, synthesize_head_slice
from services.recon.errors import InputError

N, SIZE, SHARD = 5, 32, 3


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("banks") / "bank"
    build_bank(out, n=N, seed=3, size=SIZE, workers=1, shard_size=SHARD)
    return out


def test_bank_files_and_manifest(bank: Path) -> None:
    manifest = read_manifest(bank)
    assert manifest["n"] == N and manifest["seed"] == 3 and manifest["size"] == SIZE
    assert [s["count"] for s in manifest["shards"]] == [3, 2]
    shard = np.load(bank / manifest["shards"][0]["file"])
    assert shard.dtype == np.float16 and shard.shape == (3, 2, SIZE, SIZE)
    assert "research use only" in manifest["notice"]
    assert manifest["code_version"]["data_code_sha256"]
    lines = (bank / "slices.csv").read_text().strip().splitlines()
    assert len(lines) == N + 1
    assert not list(bank.parent.glob(".bank.partial-*"))


def test_manifest_sources_are_training_only(bank: Path) -> None:
    manifest = read_manifest(bank)
    names = {entry["source"] for entry in manifest["sources"]}
    assert names and names <= set(TRAINING_SOURCES)
    assert not names & (set(EVALUATION_SOURCES) | set(VALIDATION_SOURCES))
    assert all(entry["split"] == "training" for entry in manifest["sources"])
    text = (bank / "manifest.json").read_text() + (bank / "slices.csv").read_text()
    assert "single_subj" not in text
    for evaluation_source in EVALUATION_SOURCES:
        assert evaluation_source not in text


def test_bank_slice_is_the_seeded_synthesis(bank: Path) -> None:
    manifest = read_manifest(bank)
    pixel_mm = float((bank / "slices.csv").read_text().splitlines()[2].split(",")[6])
    rng = slice_generator(3, 1)
    weights = np.asarray(manifest["pixel_mm_weights"])
    rng.choice(len(weights), p=weights / weights.sum())
    expected = synthesize_head_slice(rng, SIZE, pixel_mm)
    stored = SliceBank(bank, augment=False)[1].numpy()
    np.testing.assert_allclose(stored[0], expected.real, atol=2e-3)
    np.testing.assert_allclose(stored[1], expected.imag, atol=2e-3)


def test_same_seed_same_bank(bank: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_bank(again, n=N, seed=3, size=SIZE, workers=1, shard_size=SHARD)
    for shard in read_manifest(bank)["shards"]:
        assert (again / shard["file"]).read_bytes() == (bank / shard["file"]).read_bytes()
    original = json.loads((bank / "manifest.json").read_text())["shards"]
    assert json.loads((again / "manifest.json").read_text())["shards"] == original


def test_existing_bank_is_not_overwritten(bank: Path) -> None:
    with pytest.raises(InputError, match="not empty"):
        build_bank(bank, n=1, seed=0, size=SIZE, workers=1)


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.recon.data.bank as bank_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("synthesis failed")

    monkeypatch.setattr(bank_module, "synthesize_head_slice_with_info", broken)
    with pytest.raises(RuntimeError):
        build_bank(tmp_path / "bank", n=2, seed=0, size=SIZE, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_dataset_shapes_and_seeded_augmentation(bank: Path) -> None:
    plain = SliceBank(bank, augment=False)
    seeded = SliceBank(bank, augment=True, seed=5)
    assert len(plain) == N
    item = seeded[2]
    assert item.shape == (2, SIZE, SIZE) and item.dtype == torch.float32
    torch.testing.assert_close(item, SliceBank(bank, augment=True, seed=5)[2])
    magnitude = plain[2].square().sum(0).sqrt()
    augmented = item.square().sum(0).sqrt()
    ratio = augmented.sum() / magnitude.sum()
    assert 0.8 - 1e-4 <= float(ratio) <= 1.25 + 1e-4
    with pytest.raises(IndexError):
        plain[N]


def test_augmentation_is_a_rigid_phase_and_scale_change() -> None:
    image = torch.randn(2, 8, 8)
    out = augment_complex_slice(image, torch.Generator().manual_seed(0))
    before = torch.sort((image.square().sum(0)).flatten()).values
    after = torch.sort((out.square().sum(0)).flatten()).values
    factor = after.sum() / before.sum()
    torch.testing.assert_close(after, before * factor)
    assert 0.8**2 - 1e-4 <= float(factor) <= 1.25**2 + 1e-4


def test_mirror_geometry_only_flips_left_right() -> None:
    image = torch.randn(2, 8, 8)
    for seed in range(20):
        out = augment_complex_slice(image, torch.Generator().manual_seed(seed), "mirror")
        magnitude, original = out.square().sum(0), image.square().sum(0)
        factor = magnitude.sum() / original.sum()
        upright = torch.allclose(magnitude, original * factor, rtol=1e-4, atol=1e-5)
        mirrored = torch.allclose(magnitude, original.flip(1) * factor, rtol=1e-4, atol=1e-5)
        assert upright or mirrored


def test_slices_are_selected_by_pixel_size(bank: Path) -> None:
    sizes = [
        float(line.split(",")[6]) for line in (bank / "slices.csv").read_text().splitlines()[1:]
    ]
    for size in set(sizes):
        assert indices_at_pixel_sizes(bank, (size,)) == [
            i for i, s in enumerate(sizes) if s == size
        ]
    assert indices_at_pixel_sizes(bank, tuple(set(sizes))) == list(range(N))
    with pytest.raises(InputError, match=r"no slice .* at \[3\.7\] mm"):
        indices_at_pixel_sizes(bank, (3.7,))


def test_unknown_geometry_is_an_input_error(bank: Path) -> None:
    with pytest.raises(InputError, match="geometry must be one of dihedral, mirror"):
        SliceBank(bank, geometry="sideways")  # type: ignore[arg-type]


def test_directory_without_manifest_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a slice bank"):
        SliceBank(tmp_path)


@pytest.mark.slow
def test_two_workers_build_the_same_bank(bank: Path, tmp_path: Path) -> None:
    parallel = tmp_path / "parallel"
    build_bank(parallel, n=N, seed=3, size=SIZE, workers=2, shard_size=SHARD)
    for shard in read_manifest(bank)["shards"]:
        assert (parallel / shard["file"]).read_bytes() == (bank / shard["file"]).read_bytes()


def test_pickled_bank_maps_files_again_instead_of_copying(bank: Path) -> None:
    import pickle

    dataset = SliceBank(bank, augment=False)
    payload = pickle.dumps(dataset)
    assert len(payload) < 20_000  # no shard data inside
    torch.testing.assert_close(pickle.loads(payload)[4], dataset[4])


def test_zero_phase_selection_gives_the_magnitudes_and_is_recorded(bank: Path) -> None:
    from services.recon.training import BankSelection, open_bank

    complex_slices = open_bank(bank, BankSelection(geometry="mirror"))
    magnitudes = open_bank(bank, BankSelection(geometry="mirror", zero_phase=True))
    assert len(magnitudes) == len(complex_slices)  # type: ignore[arg-type]
    original, zero_phase = complex_slices[1], magnitudes[1]
    magnitude = torch.linalg.vector_norm(original, dim=0)
    # Each read draws its own left-right flip and intensity scale (mirror geometry).
    factor = zero_phase[0].sum() / magnitude.sum()
    assert any(
        torch.allclose(zero_phase[0], candidate * factor, rtol=1e-4, atol=1e-5)
        for candidate in (magnitude, magnitude.flip(-1))
    )
    assert torch.all(zero_phase[1] == 0) and torch.any(original[1] != 0)
    assert BankSelection(zero_phase=True).to_dict()["zero_phase"] is True
    assert "zero_phase" not in BankSelection().to_dict()


@pytest.mark.parametrize(
    ("option", "column"), [("fold_probability", "folded"), ("atrophy_probability", "atrophic")]
)
def test_bank_records_each_anatomy_option_and_the_slices_it_changed(
    tmp_path: Path, option: str, column: str
) -> None:
    out = tmp_path / "bank"
    always = SliceVariations(**{option: 1.0})
    build_bank(out, n=6, seed=5, size=32, workers=1, shard_size=6, variations=always)
    manifest = read_manifest(out)
    assert manifest[option] == 1.0
    with (out / "slices.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert manifest[f"{column}_count"] == sum(int(row[column]) for row in rows)
    assert all(row[column] == str(int(row["recipe"].endswith("_tissues"))) for row in rows)
    with pytest.raises(InputError, match=option):
        SliceVariations(**{option: 1.5})


def test_bank_records_its_dwi_probability_and_counts_the_b0_contrasts(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    b0_contrast = SliceVariations(dwi_probability=1.0)
    build_bank(out, n=3, seed=5, size=32, workers=1, shard_size=3, variations=b0_contrast)
    manifest = read_manifest(out)
    assert manifest["dwi_probability"] == 1.0
    assert manifest["contrast_counts"] == {"dwi_b0": 3}
