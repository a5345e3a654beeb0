"""The engine: options validation, baselines through one interface, simulated k-space labelling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.recon import physics
from services.recon.coils import birdcage_maps
from services.recon.engine import (
    ReconEngine,
    ReconOptions,
    RetrospectiveOptions,
    retrospective_kspace,
    undersample,
)
from services.recon.errors import InputError
from services.recon.io import ImageVolume, KspaceVolume
from services.recon.masks import make_mask
from services.recon.prior import LoadedPrior


def disc_phantom(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size / 2
    image = (x**2 + y**2 < (size / 3) ** 2).astype(np.float32)
    image[size // 2 - 3 : size // 2 + 3, size // 2 - 3 : size // 2 + 3] = 2.0
    return image


def image_volume(slices: int = 2, size: int = 32) -> ImageVolume:
    images = np.stack([disc_phantom(size)] * slices)
    return ImageVolume(
        images=images,
        pixel_spacing_mm=(2.0, 2.0),
        slice_thickness_mm=2.0,
        affine=None,
        positions=None,
        orientation=None,
        dicom_reference=None,
        source="phantom",
    )


@pytest.mark.parametrize(
    ("options", "word"),
    [
        (ReconOptions(method="magic"), "method"),
        (ReconOptions(samples=0), "samples"),
        (ReconOptions(lam=-1.0), "lam"),
        (ReconOptions(consistency="exact"), "consistency"),
    ],
)
def test_bad_options_are_named(options: ReconOptions, word: str) -> None:
    with pytest.raises(InputError, match=word):
        options.validated()


@pytest.mark.parametrize(
    ("retro", "word"),
    [
        (RetrospectiveOptions(mask="spiral"), "mask"),
        (RetrospectiveOptions(accel=0.5), "acceleration"),
        (RetrospectiveOptions(center_fraction=1.5), "center"),
    ],
)
def test_bad_retrospective_options_are_named(retro: RetrospectiveOptions, word: str) -> None:
    with pytest.raises(InputError, match=word):
        retro.validated()


def test_retrospective_kspace_is_labelled_simulated_and_masked() -> None:
    volume = retrospective_kspace(image_volume(), RetrospectiveOptions(accel=4, seed=3))
    assert volume.simulated
    assert volume.kspace.shape == (2, 1, 32, 32)
    assert np.all(volume.kspace[:, 0][~volume.mask] == 0)
    assert np.iscomplexobj(volume.kspace)
    # smooth random phase: the image is not real-valued (no inverse crime)
    full = physics.ifft2c(physics.simulate_kspace(disc_phantom(), snr=1e6, seed=0))
    assert np.abs(np.angle(full[disc_phantom() > 0])).max() > 0.05


def test_zero_filled_volume_has_design_attributes() -> None:
    volume = retrospective_kspace(image_volume(), RetrospectiveOptions(accel=2))
    done: list[int] = []
    result = ReconEngine().reconstruct_volume(
        volume, ReconOptions(method="zero-filled"), on_slice=lambda d, _: done.append(d)
    )
    assert done == [1, 2]
    assert result.reconstruction.shape == (2, 32, 32)
    assert result.reconstruction.dtype == np.float32
    assert result.variance is None  # no variance stands in for a method that does not sample
    assert result.attrs["simulated_kspace"] is True
    assert result.attrs["dc_residual"].shape == (2,)
    assert "research use only" in result.attrs["research_use_only"]


def test_cs_beats_zero_filled_through_the_engine() -> None:
    image = disc_phantom(64)
    mask = make_mask("random1d", image.shape, 4, 0.08, 0)
    kspace = (physics.simulate_kspace(image, snr=200, seed=0) * mask)[None]
    engine = ReconEngine()
    error = {
        method: np.linalg.norm(
            engine.reconstruct_slice(
                kspace, mask, False, ReconOptions(method=method, lam=0.01)
            ).reconstruction
            - image
        )
        for method in ("zero-filled", "cs-l1", "cs-tv")
    }
    assert error["cs-l1"] < error["zero-filled"]
    assert error["cs-tv"] < error["zero-filled"]


def test_multicoil_zero_filled_runs_at_rss_scale() -> None:
    image = disc_phantom(32).astype(np.complex64)
    maps = birdcage_maps(4, (32, 32))
    kspace = physics.fft2c(maps * image)
    mask = np.ones((32, 32), bool)
    result = ReconEngine().reconstruct_slice(kspace, mask, True, ReconOptions(method="zero-filled"))
    inside = disc_phantom(32) > 0
    assert np.allclose(result.reconstruction[inside], np.abs(image)[inside], rtol=0.05)
    assert result.dc_residual < 0.05


def test_undersample_keeps_existing_mask() -> None:
    kspace = np.ones((1, 1, 16, 16), np.complex64)
    own = np.zeros((1, 16, 16), bool)
    own[:, :, ::2] = True
    volume = KspaceVolume(kspace * own[:, None], False, own, {}, False, None, "k")
    masked = undersample(volume, RetrospectiveOptions(accel=2, seed=1))
    assert not (masked.mask & ~own).any()


def test_bad_slice_is_refused() -> None:
    engine = ReconEngine()
    with pytest.raises(InputError, match="complex"):
        engine.reconstruct_slice(
            np.ones((1, 8, 8)), np.ones((8, 8), bool), False, ReconOptions(method="zero-filled")
        )
    with pytest.raises(InputError, match="mask"):
        engine.reconstruct_slice(
            np.ones((1, 8, 8), np.complex64),
            np.ones((4, 8), bool),
            False,
            ReconOptions(method="zero-filled"),
        )


def test_warm_start_from_cs_tv_is_recorded_and_starts_elsewhere(tiny_prior: LoadedPrior) -> None:
    engine = ReconEngine.from_prior(tiny_prior)
    volume = retrospective_kspace(image_volume(slices=1), RetrospectiveOptions(accel=3.0))
    base = ReconOptions(samples=2, steps=4, refine_steps=2, warm_start=30)
    from_zero_filled = engine.reconstruct_volume(volume, base)
    from_tv = engine.reconstruct_volume(
        volume, replace(base, warm_start_from="cs-tv", lam=1e-2, cs_iterations=20)
    )
    assert from_zero_filled.attrs["warm_start_from"] == "zero-filled"
    assert from_tv.attrs["warm_start_from"] == "cs-tv"
    assert not np.allclose(from_zero_filled.reconstruction, from_tv.reconstruction)


def test_unknown_warm_start_source_is_named() -> None:
    with pytest.raises(InputError, match="warm start source"):
        ReconOptions(warm_start=100, warm_start_from="grappa").validated()


def test_eta_reaches_the_sampler_and_is_checked(tiny_prior: LoadedPrior) -> None:
    engine = ReconEngine.from_prior(tiny_prior)
    volume = retrospective_kspace(image_volume(slices=1), RetrospectiveOptions(accel=3.0))
    base = ReconOptions(samples=2, steps=4, refine_steps=2)
    stochastic = engine.reconstruct_volume(volume, base)
    deterministic = engine.reconstruct_volume(volume, replace(base, eta=0.0))
    assert not np.allclose(stochastic.reconstruction, deterministic.reconstruction)
    with pytest.raises(InputError, match="eta must be in"):
        replace(base, eta=1.5).validated()
