"""Scanner-appearance randomisation: deterministic, shared by a pair, noisy at the stated SNR."""

from __future__ import annotations

import numpy as np

from services.recon.data.appearance import AppearanceRanges, randomise_appearance
from services.recon.metrics import foreground_mask
from tests.unit.test_lesions import head_phantom


def pair_with_lesion(size: int = 64) -> np.ndarray:
    healthy = head_phantom(size).astype(np.float64)
    lesioned = healthy.copy()
    lesioned[size // 2 - 3 : size // 2 + 3, size // 2 - 3 : size // 2 + 3] *= 2.0
    return np.stack([healthy, lesioned])


def test_same_generator_same_appearance_and_another_differs() -> None:
    pair = pair_with_lesion()
    a = randomise_appearance(pair, np.random.default_rng(5))
    b = randomise_appearance(pair, np.random.default_rng(5))
    c = randomise_appearance(pair, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == pair.shape and a.dtype == np.float32 and (a >= 0).all()


def test_a_pair_gets_one_draw_so_it_still_differs_only_near_the_lesion() -> None:
    pair = pair_with_lesion()
    for seed in range(6):
        out = randomise_appearance(pair, np.random.default_rng(seed))
        differs = np.abs(out[1] - out[0]) > 1e-6
        near_lesion = np.zeros(differs.shape, dtype=bool)
        near_lesion[32 - 10 : 32 + 10, 32 - 10 : 32 + 10] = True
        assert differs[near_lesion].any()
        assert not differs[~near_lesion].any(), f"seed {seed}: the pair's nuisances differ"


def test_noise_follows_the_stated_snr_without_other_changes() -> None:
    flat = np.zeros((1, 64, 64))
    flat[0, 16:48, 16:48] = 1.0
    only_noise = AppearanceRanges(
        blur_sigma_px=(0.0, 0.0),
        sharpen_amount=(0.0, 0.0),
        texture_strength=(0.0, 0.0),
        snr=(20.0, 20.0),
    )
    out = randomise_appearance(flat, np.random.default_rng(0), only_noise)[0]
    head = foreground_mask(flat[0])
    # Rician noise at SNR 20 on a level of 1: sigma 0.05 per channel.
    inside = out[16:48, 16:48] - 1.0
    assert abs(float(inside.std()) - 0.05) < 0.01
    assert head.sum() > 0 and abs(float(out[head].mean()) - 1.0) < 0.02
