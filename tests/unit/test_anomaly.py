"""Anomaly maps on a tiny random network: shape, sign, determinism, s = 0 is unguided; baselines."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import Tensor

from services.recon.anomaly import (
    GATE_POWER,
    GUIDANCE_TARGETS,
    AnomalyConfig,
    AnomalyDetector,
    EpsModel,
    ddim_decode,
    ddim_encode,
    otsu_mask,
    zscore_map,
)
from services.recon.classifier import (
    ClassifierConfig,
    LoadedClassifier,
    NoiseAwareClassifier,
    lesion_probability_map,
)
from services.recon.data.lesions import insert_lesion
from services.recon.diffusion import DiffusionSchedule, space_timesteps
from services.recon.errors import InputError
from services.recon.metrics import foreground_mask
from services.recon.prior import LoadedPrior
from services.recon.unet import UNet, UNetConfig
from tests.unit.test_lesions import head_phantom

SCHEDULE = DiffusionSchedule.cosine()


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised branches too), so the net does something."""
    torch.manual_seed(seed)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return module.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_prior() -> LoadedPrior:
    torch.set_num_threads(1)
    config = UNetConfig(channels=(8, 16), blocks_per_level=1, norm_groups=4, time_embedding_dim=16)
    model = randomised(UNet(config), 0)
    assert isinstance(model, UNet)
    return LoadedPrior(model, config, SCHEDULE, "0" * 64, "tiny-prior", Path("tiny"), 0)


@pytest.fixture(scope="module")
def tiny_classifier() -> LoadedClassifier:
    config = ClassifierConfig(channels=(8, 16), norm_groups=4, time_embedding_dim=16)
    model = randomised(NoiseAwareClassifier(config), 1)
    assert isinstance(model, NoiseAwareClassifier)
    return LoadedClassifier(model, config, SCHEDULE, "1" * 64, "tiny-clf", Path("tiny"), 0)


def detector(prior: LoadedPrior, classifier: LoadedClassifier, **knobs: object) -> AnomalyDetector:
    settings: dict[str, object] = {"noise_level": 300, "steps": 4, "scale": 50.0, **knobs}
    return AnomalyDetector(prior, classifier, AnomalyConfig(**settings))  # type: ignore[arg-type]


def test_map_has_input_shape_and_is_non_negative(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    image = head_phantom(32) * 250.0
    for method in ("guided", "unguided", "zscore"):
        result = detector(tiny_prior, tiny_classifier, method=method).detect(image)
        assert result.anomaly_map.shape == result.healthy.shape == image.shape
        assert result.anomaly_mask.shape == image.shape and result.anomaly_mask.dtype == bool
        assert result.anomaly_map.min() >= 0
        assert np.isfinite(result.anomaly_map).all() and result.seconds >= 0
    # Sizes that are not a multiple of the UNet's are padded inside and cropped back.
    odd = detector(tiny_prior, tiny_classifier).detect(head_phantom(36)[:, 2:32])
    assert odd.anomaly_map.shape == (36, 30)


def test_same_seed_gives_the_same_map(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    image = head_phantom(32)
    first = detector(tiny_prior, tiny_classifier, seed=5).detect(image)
    second = detector(tiny_prior, tiny_classifier, seed=5).detect(image)
    np.testing.assert_array_equal(first.anomaly_map, second.anomaly_map)
    np.testing.assert_array_equal(first.anomaly_mask, second.anomaly_mask)


def test_zero_guidance_equals_unguided_and_guidance_changes_the_result(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    image = head_phantom(32)
    guided_zero = detector(tiny_prior, tiny_classifier, method="guided", scale=0.0).detect(image)
    unguided = detector(tiny_prior, tiny_classifier, method="unguided").detect(image)
    guided = detector(tiny_prior, tiny_classifier, method="guided", scale=500.0).detect(image)
    np.testing.assert_array_equal(guided_zero.healthy, unguided.healthy)
    np.testing.assert_array_equal(guided_zero.anomaly_map, unguided.anomaly_map)
    assert not np.allclose(guided.healthy, unguided.healthy)


def test_batch_equals_one_by_one(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    images = np.stack([head_phantom(32), head_phantom(32)[::-1].copy() * 3])
    found = detector(tiny_prior, tiny_classifier, bf16=False)
    batch = found.detect_batch(images)
    single = found.detect(images[1])
    np.testing.assert_allclose(batch[1].anomaly_map, single.anomaly_map, rtol=1e-4, atol=1e-6)


def oracle_eps(target: Tensor) -> EpsModel:
    """The exact noise predictor of a data set holding only ``target``."""

    def eps(x: Tensor, t: Tensor) -> Tensor:
        abar = SCHEDULE.alpha_bar(t, x)
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()

    return eps


def test_ddim_encode_decode_round_trip_with_an_exact_model() -> None:
    target = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    timesteps = [t for t in space_timesteps(1000, 11, 600) if t > 0]
    eps = oracle_eps(target)
    encoded = ddim_encode(eps, SCHEDULE, target, timesteps)
    assert not torch.allclose(encoded, target)
    decoded = ddim_decode(eps, SCHEDULE, encoded, timesteps)
    torch.testing.assert_close(decoded, target)
    # A constant guidance direction moves the result along that direction.
    direction = torch.randn_like(target)
    steered = ddim_decode(
        eps,
        SCHEDULE,
        encoded,
        timesteps,
        guidance=lambda x, t: direction,
    )
    assert float(((steered - target) * direction).sum()) > 0


def test_zscore_baseline_flags_a_bright_lesion() -> None:
    image = head_phantom(64)
    candidates = (insert_lesion(image, seed=seed) for seed in range(50))
    lesioned = next(c for c in candidates if c.params.hyperintense and c.lesion_mask.sum() > 20)
    head = foreground_mask(lesioned.image)
    score, healthy = zscore_map(lesioned.image.astype(np.float64), head)
    assert np.all(score[~head] == 0) and np.all(healthy[~head] == lesioned.image[~head])
    assert score[lesioned.lesion_mask].mean() > score[head & ~lesioned.lesion_mask].mean()


def test_otsu_mask_stays_in_the_head_and_is_empty_for_a_flat_map() -> None:
    head = np.zeros((16, 16), bool)
    head[4:12, 4:12] = True
    values = np.zeros((16, 16))
    values[6:8, 6:8] = 5.0
    values[0, 0] = 9.0
    mask = otsu_mask(values, head)
    assert mask[6:8, 6:8].all() and not mask[0, 0] and mask.sum() == 4
    assert not otsu_mask(np.ones((16, 16)), head).any()


def test_bad_input_and_options_raise_input_error(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    found = detector(tiny_prior, tiny_classifier)
    with pytest.raises(InputError, match="slices"):
        found.detect_batch(np.zeros((2, 2, 32, 32)))
    with pytest.raises(InputError, match="NaN"):
        found.detect(np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="all zeros"):
        found.detect(np.zeros((32, 32)))
    with pytest.raises(InputError, match="too small"):
        found.detect(np.ones((8, 8)))
    with pytest.raises(InputError, match="noise level"):
        detector(tiny_prior, tiny_classifier, noise_level=1000)
    with pytest.raises(InputError, match="unknown anomaly method"):
        detector(tiny_prior, tiny_classifier, method="magic")
    with pytest.raises(InputError, match="classifier"):
        AnomalyDetector(tiny_prior, None, AnomalyConfig(method="guided"))
    with pytest.raises(InputError, match="prior"):
        AnomalyDetector(None, None, AnomalyConfig(method="unguided"))
    other = LoadedClassifier(
        tiny_classifier.model,
        tiny_classifier.config,
        DiffusionSchedule.cosine(500),
        "2",
        "x",
        Path("x"),
        0,
    )
    with pytest.raises(InputError, match="noise schedules"):
        AnomalyDetector(tiny_prior, other, AnomalyConfig(method="guided"))


def test_attributes_name_models_and_knobs(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    attrs = detector(tiny_prior, tiny_classifier, seed=9).attributes()
    assert attrs["anomaly_L"] == 300 and attrs["anomaly_s"] == 50.0 and attrs["anomaly_seed"] == 9
    assert attrs["classifier_sha256"] == "1" * 64 and attrs["prior_sha256"] == "0" * 64
    assert attrs["research_use_only"] == "research use only, not for diagnosis"
    zscore = AnomalyDetector(None, None, AnomalyConfig(method="zscore")).attributes()
    assert "prior_sha256" not in zscore and "anomaly_L" not in zscore


def save_tiny_weights(
    prior: LoadedPrior, classifier: LoadedClassifier, folder: Path
) -> tuple[Path, Path]:
    """The tiny networks as weights files in the shipped formats."""
    prior_path, classifier_path = folder / "prior.pt", folder / "classifier.pt"
    torch.save(
        {
            "format": "mrdiff-prior",
            "format_version": 1,
            "name": "tiny-prior",
            "unet_config": prior.config.to_dict(),
            "schedule": SCHEDULE.to_dict(),
            "state_dict": prior.model.state_dict(),
            "intensity": "p99",
        },
        prior_path,
    )
    torch.save(
        {
            "format": "mrdiff-classifier",
            "format_version": 1,
            "name": "tiny-classifier",
            "classifier_config": classifier.config.to_dict(),
            "schedule": SCHEDULE.to_dict(),
            "input": "zero-phase-magnitude-p99",
            "state_dict": classifier.model.state_dict(),
        },
        classifier_path,
    )
    return prior_path, classifier_path


def cli_inputs(
    prior: LoadedPrior, classifier: LoadedClassifier, folder: Path
) -> tuple[Path, Path, Path]:
    """A 2-slice NIfTI head phantom and the tiny networks' weights files, for CLI tests."""
    from services.recon.io import write_nifti

    volume = np.stack([head_phantom(32), head_phantom(32) * 2]) * 100
    source = write_nifti(folder / "in.nii.gz", volume, (2.0, 2.0), 2.0)
    return (source, *save_tiny_weights(prior, classifier, folder))


def test_cli_writes_anomaly_h5_from_nifti(
    tmp_path: Path, tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    from services.cli import main

    source, prior_path, classifier_path = cli_inputs(tiny_prior, tiny_classifier, tmp_path)
    out = tmp_path / "out.h5"
    args = [
        "anomaly",
        str(source),
        "--out",
        str(out),
        "--weights",
        str(prior_path),
        "--classifier",
        str(classifier_path),
        "--L",
        "200",
        "--s",
        "10",
        "--steps",
        "3",
        "--seed",
        "4",
    ]
    main(args)
    with h5py.File(out, "r") as h5:
        assert set(h5) == {"anomaly_map", "healthy", "anomaly_mask"}
        assert h5["anomaly_map"].shape == (2, 32, 32) and h5["anomaly_mask"].dtype == bool
        assert float(np.min(h5["anomaly_map"][()])) >= 0
        attrs = dict(h5.attrs)
    assert attrs["anomaly_L"] == 200 and attrs["anomaly_s"] == 10.0 and attrs["seed"] == 4
    assert attrs["research_use_only"] == "research use only, not for diagnosis"
    assert "tiny-classifier" in attrs["model_versions"] and attrs["seconds"] > 0
    with pytest.raises(SystemExit) as refused:
        main(args)
    assert refused.value.code == 2


def test_cli_refuses_kspace_and_leaves_no_output(tmp_path: Path) -> None:
    from services.cli import main
    from services.recon.io import KspaceVolume, write_kspace_h5

    kspace = np.ones((1, 1, 32, 32), np.complex64)
    volume = KspaceVolume(kspace=kspace, multicoil=False, mask=np.ones((1, 32, 32), bool))
    source = tmp_path / "k.h5"
    write_kspace_h5(source, volume)
    out = tmp_path / "out.h5"
    with pytest.raises(SystemExit) as failed:
        main(["anomaly", str(source), "--out", str(out), "--method", "zscore"])
    assert failed.value.code == 2
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_engine_anomaly_slice_is_the_detector_with_validation_defaults(
    tmp_path: Path, tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    from services.recon.anomaly import default_config
    from services.recon.classifier import load_classifier
    from services.recon.engine import ReconEngine, ReconOptions
    from services.recon.prior import load_prior

    prior_path, classifier_path = save_tiny_weights(tiny_prior, tiny_classifier, tmp_path)
    engine = ReconEngine(prior_path=prior_path, classifier_path=classifier_path, device="cpu")
    image = head_phantom(32) * 80.0
    options = ReconOptions(anomaly=True, anomaly_method="guided", seed=3)
    result = engine.anomaly_slice(image, options)
    expected = AnomalyDetector(
        load_prior(prior_path, device="cpu"),
        load_classifier(classifier_path, device="cpu"),
        default_config("guided", seed=3),
    ).detect(image)
    np.testing.assert_allclose(result.anomaly_map, expected.anomaly_map, rtol=1e-5, atol=1e-6)
    assert result.anomaly_map.shape == image.shape and result.anomaly_map.min() >= 0
    assert "tiny-classifier" in engine.model_versions()
    volume = engine.anomaly_volume(np.stack([image, image]), options, batch=1)
    assert set(volume.datasets) == {"anomaly_map", "healthy", "anomaly_mask"}
    np.testing.assert_allclose(volume.datasets["anomaly_map"][1], result.anomaly_map, atol=1e-6)
    assert volume.attrs["anomaly_method"] == "guided" and volume.attrs["anomaly_seed"] == 3
    with pytest.raises(InputError, match="anomaly method"):
        engine.anomaly_slice(image, ReconOptions(anomaly_method="magic"))


def test_reconstruct_with_anomaly_adds_the_maps_of_the_reconstruction(
    tmp_path: Path, tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    from services.cli import main

    source, prior_path, classifier_path = cli_inputs(tiny_prior, tiny_classifier, tmp_path)
    out = tmp_path / "recon.h5"
    args = ["reconstruct", str(source), "--out", str(out), "--method", "zero-filled"]
    args += ["--anomaly", "--weights", str(prior_path), "--classifier", str(classifier_path)]
    main(args)
    with h5py.File(out, "r") as h5:
        assert {"reconstruction", "mask", "anomaly_map", "healthy", "anomaly_mask"} <= set(h5)
        reconstruction = h5["reconstruction"][()]
        assert h5["anomaly_map"].shape == reconstruction.shape
        assert h5["anomaly_mask"].dtype == bool and h5["anomaly_map"][()].min() >= 0
        attrs = dict(h5.attrs)
    assert attrs["anomaly_method"] == "guided" and attrs["method"] == "zero-filled"
    assert attrs["classifier_model"] == "tiny-classifier" and attrs["anomaly_seconds"] >= 0
    # The maps are those of the reconstruction, not of the (fully sampled) input.
    from services.recon.engine import ReconEngine, ReconOptions

    # Same batching as the CLI: in float32, convolutions of another batch size round differently.
    engine = ReconEngine(prior_path=prior_path, classifier_path=classifier_path, device="cpu")
    again = engine.anomaly_volume(reconstruction, ReconOptions(anomaly=True))
    with h5py.File(out, "r") as h5:
        np.testing.assert_allclose(h5["anomaly_map"][()], again.datasets["anomaly_map"], atol=1e-6)


def test_tuned_defaults_round_trip_through_the_defaults_file(
    tmp_path: Path, tiny_prior: LoadedPrior
) -> None:
    from services.bench.anomaly import TuningResult, save_defaults
    from services.recon.anomaly import default_config, defaults_are_tuned

    path = tmp_path / "anomaly_defaults.json"
    assert not defaults_are_tuned("unguided", path)
    chosen = AnomalyConfig(method="unguided", noise_level=300, steps=7, scale=0.0, smoothing_px=2)
    save_defaults(
        {"unguided": TuningResult(chosen, 0.8, 0.3, 6)}, tiny_prior, None, path, {"L": [300]}
    )
    loaded = default_config("unguided", seed=5, path=path)
    assert loaded == replace(chosen, seed=5) and defaults_are_tuned("unguided", path)
    # Another method tuned later keeps the first one's entry.
    zscore = TuningResult(AnomalyConfig(method="zscore"), 0.7, 0.2, 1)
    save_defaults({"zscore": zscore}, None, None, path)
    assert default_config("unguided", path=path).noise_level == 300
    assert default_config("guided", path=path) == AnomalyConfig()


def test_each_guidance_target_keeps_its_own_validation_knobs(tmp_path: Path) -> None:
    from services.bench.anomaly import TuningResult, save_defaults
    from services.recon.anomaly import default_config

    path = tmp_path / "anomaly_defaults.json"
    slice_best = AnomalyConfig(noise_level=500, scale=30.0, smoothing_px=1.0)
    location_best = AnomalyConfig(
        noise_level=300, scale=3.0, smoothing_px=2.0, guidance="location", reference="unguided"
    )
    by_guidance = {"slice": (1.30, slice_best), "location": (1.29, location_best)}
    result = TuningResult(slice_best, 0.88, 0.42, 4, best_by_guidance=by_guidance)
    save_defaults({"guided": result}, None, None, path, {"guidance": ["slice", "location"]})
    assert default_config("guided", path=path) == slice_best
    assert default_config("guided", path=path, guidance="slice") == slice_best
    assert default_config("guided", path=path, guidance="location") == location_best
    # Tuning one target again keeps the other targets' knobs (same models).
    gated_best = AnomalyConfig(noise_level=250, scale=100.0, guidance="gated-input")
    again = TuningResult(
        gated_best, 0.9, 0.5, 2, best_by_guidance={"gated-input": (1.40, gated_best)}
    )
    save_defaults({"guided": again}, None, None, path, {"guidance": ["gated-input"]})
    assert default_config("guided", path=path) == gated_best
    assert default_config("guided", path=path, guidance="location") == location_best
    assert default_config("guided", path=path, guidance="slice") == slice_best


def test_unguided_reference_leaves_only_what_guidance_changed(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    image = head_phantom(32) * 40.0
    knobs: dict[str, object] = {"smoothing_px": 0.0, "bf16": False}
    unguided = detector(tiny_prior, tiny_classifier, method="unguided", **knobs).detect(image)
    zero = detector(tiny_prior, tiny_classifier, scale=0.0, reference="unguided", **knobs)
    assert not zero.detect(image).anomaly_map.any()
    contrast = detector(tiny_prior, tiny_classifier, scale=500.0, reference="unguided", **knobs)
    result = contrast.detect(image)
    np.testing.assert_allclose(
        result.anomaly_map, np.abs(unguided.healthy - result.healthy), rtol=1e-5, atol=1e-5
    )
    assert result.anomaly_map.max() > 0
    assert contrast.attributes()["anomaly_reference"] == "unguided"
    with pytest.raises(InputError, match="only for the guided"):
        detector(tiny_prior, tiny_classifier, method="unguided", reference="unguided")
    with pytest.raises(InputError, match="unknown anomaly reference"):
        detector(tiny_prior, tiny_classifier, reference="mean")


def test_each_guidance_target_changes_the_decoding_its_own_way_and_is_recorded(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    image = head_phantom(32) * 40.0
    knobs: dict[str, object] = {"smoothing_px": 0.0, "bf16": False, "reference": "unguided"}
    maps = {}
    for target in GUIDANCE_TARGETS:
        zero = detector(tiny_prior, tiny_classifier, scale=0.0, guidance=target, **knobs)
        assert not zero.detect(image).anomaly_map.any()
        guided = detector(tiny_prior, tiny_classifier, scale=500.0, guidance=target, **knobs)
        maps[target] = guided.detect(image).anomaly_map
        assert maps[target].max() > 0
        assert guided.attributes()["anomaly_guidance"] == target
    for first, second in itertools.combinations(GUIDANCE_TARGETS, 2):
        assert not np.allclose(maps[first], maps[second])
    with pytest.raises(InputError, match="unknown guidance target"):
        detector(tiny_prior, tiny_classifier, guidance="pixel")


def test_gated_guidance_is_the_slice_gradient_weighted_by_a_power_of_the_lesion_probability(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    torch.manual_seed(3)
    x, t = torch.randn(2, 2, 32, 32), 120
    gradients = {
        target: detector(tiny_prior, tiny_classifier, guidance=target, bf16=False)._guidance(x)(
            x, t
        )
        for target in ("slice", "gated")
    }
    with torch.no_grad():
        evidence = tiny_classifier.model.evidence(x, torch.full((2,), t))
    gate = lesion_probability_map(evidence, (32, 32))
    assert gate.shape == (2, 1, 32, 32) and gate.min() > 0 and gate.max() < 1
    torch.testing.assert_close(gradients["gated"], gradients["slice"] * gate**GATE_POWER)


def test_input_gate_is_read_once_from_the_clean_input(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    torch.manual_seed(4)
    x0, x, t = torch.randn(2, 2, 32, 32), torch.randn(2, 2, 32, 32), 120
    gated = detector(tiny_prior, tiny_classifier, guidance="gated-input", bf16=False)
    input_gate = gated._input_gate(x0)
    with torch.no_grad():
        evidence = tiny_classifier.model.evidence(x0, torch.zeros(2, dtype=torch.long))
    expected = lesion_probability_map(evidence, (32, 32)) ** GATE_POWER
    torch.testing.assert_close(input_gate, expected)
    plain = detector(tiny_prior, tiny_classifier, guidance="slice", bf16=False)._guidance(x0)
    torch.testing.assert_close(gated._guidance(x0)(x, t), plain(x, t) * input_gate)


def test_tuning_scores_both_references_of_one_guided_run(
    tiny_prior: LoadedPrior, tiny_classifier: LoadedClassifier
) -> None:
    from services.bench.anomaly import (
        Case,
        lesion_only_score,
        map_units,
        run_detector,
        slice_separation,
        tune_method,
    )
    from services.recon.data.splits import EvalSlice

    cases = []
    for seed in (3, 4):
        image = head_phantom(32).astype(np.float32)
        lesioned = insert_lesion(image, seed)
        reference = EvalSlice("phantom", "phantom", seed, image, False, 2.0)
        head = foreground_mask(lesioned.image)
        cases.append(Case(reference, image, lesioned.image, lesioned.lesion_mask, head, "large"))
    base = AnomalyConfig(steps=3, bf16=False)
    result = tune_method(
        tiny_prior, tiny_classifier, "guided", cases, base, [200], [50.0], [0.0, 1.0]
    )
    assert result.tried == 4  # 2 references x 2 smoothings from one (L, s) run
    assert set(result.best_by_reference) == {"input", "unguided"}
    assert max(result.best_by_reference.values()) == pytest.approx(
        result.auroc_head + result.dice_otsu
    )
    inputs = [c.lesion_image for c in cases]
    rerun = run_detector(AnomalyDetector(tiny_prior, tiny_classifier, result.config), inputs)
    maps = [map_units(r, x, "guided") for r, x in zip(rerun, inputs, strict=True)]
    again = lesion_only_score(cases, rerun, maps)
    assert again["auroc_head"] == pytest.approx(result.auroc_head, abs=1e-6)
    assert again["dice_otsu"] == pytest.approx(result.dice_otsu, abs=1e-6)
    assert result.slice_auroc is None

    counted = tune_method(
        tiny_prior,
        tiny_classifier,
        "guided",
        cases,
        base,
        [200],
        [50.0],
        [0.0, 1.0],
        lesion_free=True,
    )
    assert counted.tried == 4 and counted.slice_auroc is not None
    assert max(counted.best_by_reference.values()) == pytest.approx(
        counted.auroc_head + counted.dice_otsu + counted.slice_auroc
    )
    detector = AnomalyDetector(tiny_prior, tiny_classifier, counted.config)
    lesion = run_detector(detector, inputs)
    healthy_inputs = [c.healthy_image for c in cases]
    healthy = run_detector(detector, healthy_inputs)
    separation = slice_separation(
        cases,
        [map_units(r, x, "guided") for r, x in zip(lesion, inputs, strict=True)],
        [map_units(r, x, "guided") for r, x in zip(healthy, healthy_inputs, strict=True)],
    )
    assert separation == pytest.approx(counted.slice_auroc, abs=1e-6)


def test_slice_separation_is_one_when_every_lesion_slice_maps_higher() -> None:
    from services.bench.anomaly import Case, slice_separation
    from services.recon.data.splits import EvalSlice

    image = head_phantom(32).astype(np.float32)
    head = foreground_mask(image)
    reference = EvalSlice("phantom", "phantom", 0, image, False, 2.0)
    cases = [Case(reference, image, image, np.zeros_like(head), head, "large")] * 3

    def flat(level: float) -> np.ndarray:
        return np.full(image.shape, level, np.float32)

    lesion = [flat(0.2), flat(0.3), flat(0.4)]
    healthy = [flat(0.1), flat(0.15), flat(0.19)]
    assert slice_separation(cases, lesion, healthy) == 1.0
    assert slice_separation(cases, healthy, lesion) == 0.0


def test_acquired_validation_images_carry_noise_at_the_stated_snr() -> None:
    from services.bench.anomaly import acquired

    image = head_phantom(64).astype(np.float32)
    head = foreground_mask(image)
    noisy = acquired(image, snr=40.0, seed=5)
    assert noisy.shape == image.shape and noisy.dtype == np.float32
    np.testing.assert_array_equal(noisy, acquired(image, snr=40.0, seed=5))
    background = ~foreground_mask(image) & (image == 0)
    sigma = float(image[head].mean()) / 40.0
    # Rician background: E[m^2] = 2 sigma^2 for a complex Gaussian of std sigma per channel.
    assert np.sqrt(np.mean(noisy[background] ** 2) / 2) == pytest.approx(sigma, rel=0.1)
    lesioned = insert_lesion(image, 3)
    noisy_lesion = acquired(lesioned.image.astype(np.float32), snr=40.0, seed=5)
    outside = ~lesioned.lesion_mask & head
    # The same acquisition noise on both versions: away from the lesion they nearly agree.
    assert np.median(np.abs(noisy_lesion - noisy)[outside]) < 0.2 * sigma


def test_validation_cases_are_acquired_and_evaluation_scans_are_not() -> None:
    from services.bench.anomaly import build_cases

    validation = build_cases("validation", max_slices=1)[0]
    template = validation.reference.image
    residual = validation.healthy_image - template
    assert 0 < np.std(residual[~validation.head]) < 0.1 * float(np.percentile(template, 99))
    evaluation = build_cases("evaluation", max_slices=1)[0]
    np.testing.assert_array_equal(evaluation.healthy_image, evaluation.reference.image)


def test_bench_cases_take_another_lesion_family_on_request() -> None:
    from services.bench.anomaly import build_cases

    own = build_cases("validation", max_slices=1)[0]
    held_out = build_cases("validation", max_slices=1, lesion_family="held-out")[0]
    np.testing.assert_array_equal(own.reference.image, held_out.reference.image)
    assert held_out.lesion_mask.any()
    assert not np.array_equal(own.lesion_image, held_out.lesion_image)
    with pytest.raises(InputError, match="unknown lesion family 'rare'"):
        build_cases("validation", max_slices=1, lesion_family="rare")


def test_bench_anomaly_refuses_an_unknown_split_or_family_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main

    for option, expected in (
        (["--split", "training"], "unknown split 'training'"),
        (["--lesion-family", "rare"], "unknown lesion family 'rare'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "anomaly", "--methods", "zscore", "--recon-slices", "0", *option])
        message = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(message.splitlines()) == 1
        assert expected in message


def test_bench_subsets_name_all_real_scans_and_each_source() -> None:
    from services.bench.anomaly import Case, subsets
    from services.recon.data.splits import EvalSlice

    image = head_phantom(32).astype(np.float32)
    head = foreground_mask(image)

    def case(source: str, real: bool) -> Case:
        reference = EvalSlice(source, source, 0, image, real, 2.0)
        return Case(reference, image, image, np.zeros_like(head), head, "large")

    cases = [case("a", True), case("template", False), case("a", True), case("b", True)]
    assert subsets(cases) == [("all", [0, 1, 2, 3]), ("real", [0, 2, 3])]
    assert subsets(cases, by_source=True)[2:] == [("a", [0, 2]), ("template", [1]), ("b", [3])]
    only_real = [case("a", True), case("b", True)]
    assert [name for name, _ in subsets(only_real, by_source=True)] == ["all", "a", "b"]
    assert subsets([case("a", True)] * 3, by_source=True) == [("all", [0, 1, 2])]


def test_bench_score_gives_the_in_head_auroc_with_a_slice_bootstrap_interval() -> None:
    from services.bench.anomaly import Case, MethodMaps, run_detector, score
    from services.recon.data.splits import EvalSlice

    cases, lesion_inputs, healthy_inputs = [], [], []
    for seed in (3, 4, 5, 6):
        image = head_phantom(48).astype(np.float32)
        lesioned = insert_lesion(image, seed)
        reference = EvalSlice("phantom", "phantom", seed, image, False, 2.0)
        head = foreground_mask(lesioned.image)
        cases.append(Case(reference, image, lesioned.image, lesioned.lesion_mask, head, "large"))
        lesion_inputs.append(lesioned.image.astype(np.float32))
        healthy_inputs.append(image)
    zscore = AnomalyDetector(None, None, AnomalyConfig(method="zscore", smoothing_px=0.0))
    maps = MethodMaps(run_detector(zscore, lesion_inputs), run_detector(zscore, healthy_inputs))
    row = score(cases, maps, "zscore", lesion_inputs, healthy_inputs)
    assert row["slices"] == 4.0
    assert row["auroc_head_ci95_low"] <= row["auroc_head"] <= row["auroc_head_ci95_high"]
    assert row["auroc_head_ci95_low"] >= 0.0 and row["auroc_head_ci95_high"] <= 1.0
