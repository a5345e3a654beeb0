"""Noise-aware classifier: shapes, pooling, training loop with resume, weights round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from services.recon.classifier import (
    ClassifierConfig,
    NoiseAwareClassifier,
    load_classifier,
    log_prob_healthy,
    log_prob_healthy_everywhere,
    prior_input_from_magnitude,
)
from services.recon.classifier_training import (
    LesionPairs,
    PairedStepSampler,
    accuracy_by_noise_level,
    export_classifier,
    labelled_set,
    read_classifier_checkpoint,
    train_classifier,
)
from services.recon.data.lesions import TRAINING_FAMILY
from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError
from services.recon.training import BankSelection, TrainResult, latest_checkpoint
from tests.unit.test_lesions import head_phantom

TINY = ClassifierConfig(channels=(8, 16), norm_groups=4, time_embedding_dim=16)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


class PhantomBank(Dataset[torch.Tensor]):
    """A few healthy head phantoms as (2, H, W) complex slices, like a slice bank."""

    def __init__(self, count: int = 4, size: int = 32) -> None:
        base = head_phantom(size)
        self.slices = [
            torch.from_numpy(np.stack([base * (0.8 + 0.1 * i), np.zeros_like(base)]))
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.slices[index]


def test_logits_shape_any_size_and_time_dependence() -> None:
    torch.manual_seed(0)
    model = NoiseAwareClassifier(TINY).eval()
    for size in ((32, 32), (40, 36)):
        x = torch.randn(3, 2, *size)
        logits = model(x, torch.tensor([0, 10, 999]))
        assert logits.shape == (3, 2)
        assert torch.all(logits[:, 0] == 0)
    for parameter in model.parameters():  # residual branches start at zero; wake them up
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.randn(1, 2, 32, 32)
    assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([900])))


def test_pooling_lies_between_mean_and_max_evidence() -> None:
    torch.manual_seed(1)
    model = NoiseAwareClassifier(TINY).eval()
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([5, 500])
    with torch.no_grad():
        evidence = model.evidence(x, t).flatten(1)
        pooled = model.lesion_logit(x, t)
    assert torch.all(pooled >= evidence.mean(1) - 1e-5)
    assert torch.all(pooled <= evidence.max(1).values + 1e-5)
    expected = torch.nn.functional.logsigmoid(-pooled)
    torch.testing.assert_close(log_prob_healthy(model, model.evidence(x, t)), expected)


def test_everywhere_healthy_is_the_sum_over_locations_and_at_most_the_likeliest_cell() -> None:
    torch.manual_seed(2)
    model = NoiseAwareClassifier(TINY).eval()
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([5, 500])
    with torch.no_grad():
        cells = torch.nn.functional.logsigmoid(-model.evidence(x, t)).flatten(1)
        everywhere = log_prob_healthy_everywhere(model.evidence(x, t))
    torch.testing.assert_close(everywhere, cells.sum(1))
    assert torch.all(everywhere <= cells.max(1).values + 1e-6)


def test_prior_input_is_zero_phase_with_unit_99th_percentile() -> None:
    magnitude = torch.from_numpy(head_phantom(32))[None] * 7.0
    x0, scale = prior_input_from_magnitude(magnitude)
    assert x0.shape == (1, 2, 32, 32)
    assert torch.all(x0[:, 1] == 0)
    assert torch.quantile(x0[0, 0].flatten(), 0.99).item() == pytest.approx(1.0, rel=1e-5)
    assert scale.shape == (1,)


def test_paired_sampler_is_a_function_of_seed_and_step() -> None:
    sampler = PairedStepSampler(size=10, batch=6, seed=3, first_step=5, last_step=7)
    batches = list(sampler)
    assert len(batches) == 2
    for keys in batches:
        assert len(keys) == 3
        assert all(0 <= index < 10 and lesion_seed >= 0 for index, lesion_seed in keys)
    resumed = list(PairedStepSampler(size=10, batch=6, seed=3, first_step=6, last_step=7))
    assert resumed[0] == batches[1]
    with pytest.raises(InputError, match="even"):
        PairedStepSampler(size=10, batch=5, seed=0, first_step=0, last_step=1)


def test_lesion_pairs_are_cropped_together_and_labels_are_true() -> None:
    bank = PhantomBank(size=64)
    pair = LesionPairs(bank, crop=32)[(0, 11)]
    assert pair.images.shape == (2, 2, 32, 32) and pair.labels.tolist() == [0, 1]
    assert pair.masks.shape == (2, 32, 32) and not pair.masks[0].any() and pair.masks[1].any()
    assert not torch.equal(pair.images[0], pair.images[1])
    assert torch.all(pair.images[:, 1] == 0), "zero phase"
    whole = LesionPairs(bank, crop=None)[(0, 11)]
    assert whole.images.shape == (2, 2, 64, 64)
    # The crop is a window of the whole pair, and it holds the lesion.
    changed = (whole.images[1, 0] - whole.images[0, 0]).abs() > 1e-6
    window_changed = (pair.images[1, 0] - pair.images[0, 0]).abs() > 1e-6
    assert window_changed.sum() > 0 and window_changed.sum() <= changed.sum()


def test_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    bank = PhantomBank()
    common = dict(batch=4, threads=1, checkpoint_every=2, config=TINY, bf16=False, crop=24)
    straight = train_classifier(bank, tmp_path / "straight", steps=4, **common)  # type: ignore[arg-type]
    train_classifier(bank, tmp_path / "resumed", steps=2, **common)  # type: ignore[arg-type]
    resumed = train_classifier(bank, tmp_path / "resumed", steps=4, **common)  # type: ignore[arg-type]
    assert straight.step == resumed.step == 4
    a = read_classifier_checkpoint(latest_checkpoint(tmp_path / "straight"))  # type: ignore[arg-type]
    b = read_classifier_checkpoint(latest_checkpoint(tmp_path / "resumed"))  # type: ignore[arg-type]
    for key, value in a["ema"].items():
        torch.testing.assert_close(value, b["ema"][key])
    log = (tmp_path / "resumed" / "loss.csv").read_text().splitlines()
    assert log[0] == "step,loss,seconds,accuracy" and len(log) == 5
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_classifier(bank, tmp_path / "straight", steps=6, resume=False, **common)  # type: ignore[arg-type]
    # A run may switch from crops to whole slices when resumed; the checkpoint records it.
    train_classifier(bank, tmp_path / "straight", steps=6, **{**common, "crop": None})  # type: ignore[arg-type]
    switched = read_classifier_checkpoint(latest_checkpoint(tmp_path / "straight"))  # type: ignore[arg-type]
    assert switched["step"] == 6 and switched["crop"] == 0


def test_exported_weights_load_and_match(tmp_path: Path) -> None:
    train_classifier(
        PhantomBank(), tmp_path / "run", steps=1, batch=2, threads=1, config=TINY, bf16=False
    )
    exported = export_classifier(tmp_path / "run", tmp_path / "classifier.pt", name="tiny")
    assert Path(str(exported.path) + ".sha256").read_text().split()[0] == exported.sha256
    loaded = load_classifier(exported.path)
    assert loaded.name == "tiny" and loaded.sha256 == exported.sha256 and loaded.config == TINY
    payload = read_classifier_checkpoint(latest_checkpoint(tmp_path / "run"))  # type: ignore[arg-type]
    reference = NoiseAwareClassifier(TINY).eval()
    reference.load_state_dict(payload["ema"])
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([3, 300])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, t), reference(x, t))


def test_fine_tuning_starts_at_the_exported_weights_and_records_them(tmp_path: Path) -> None:
    def train(run: str, steps: int, **options: object) -> TrainResult:
        settings: dict[str, object] = dict(batch=2, threads=1, config=TINY, bf16=False, crop=None)
        return train_classifier(PhantomBank(), tmp_path / run, steps, **{**settings, **options})  # type: ignore[arg-type]

    train("base", 1)
    shipped = load_classifier(export_classifier(tmp_path / "base", tmp_path / "c.pt").path)
    record = {"sha256": shipped.sha256, "name": shipped.name, "step": 1}
    assert train("tuned", 1, lr=1e-9, init_from=shipped.path).step == 1  # a new run
    payload = read_classifier_checkpoint(latest_checkpoint(tmp_path / "tuned"))  # type: ignore[arg-type]
    assert payload["init_from"] == record
    for key, value in shipped.model.state_dict().items():  # one step at lr 1e-9 from them
        torch.testing.assert_close(payload["model"][key].float(), value, rtol=0, atol=1e-6)
    assert train("tuned", 2, init_from=shipped.path).step == 2  # the same init resumes
    exported = export_classifier(tmp_path / "tuned", tmp_path / "tuned.pt")
    assert torch.load(exported.path, weights_only=True)["init_from"] == record
    with pytest.raises(InputError, match="from scratch"):
        train("base", 2, init_from=shipped.path)
    other = ClassifierConfig(channels=(8, 8), norm_groups=4, time_embedding_dim=16)
    with pytest.raises(InputError, match="differs from the architecture"):
        train("other", 1, init_from=shipped.path, config=other)


@pytest.fixture
def selections(monkeypatch: pytest.MonkeyPatch) -> list[BankSelection | None]:
    """Bank folders open as phantoms, with the tiny network; returns the selections asked for."""
    from services.recon import classifier_training, training

    asked: list[BankSelection | None] = []

    def open_phantoms(_: Path, selection: BankSelection | None) -> PhantomBank:
        asked.append(selection)
        return PhantomBank()

    monkeypatch.setattr(training, "open_bank", open_phantoms)
    monkeypatch.setattr(classifier_training, "DEFAULT_CONFIG", TINY)
    return asked


def test_cli_passes_bank_selection_and_dense_weight_and_export_records_them(
    tmp_path: Path, selections: list[BankSelection | None]
) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    bank, run = tmp_path / "bank", tmp_path / "run"
    bank.mkdir()
    args = ["train", "classifier", "--bank", str(bank), "--run", str(run), "--steps", "1"]
    options = ["--batch", "2", "--crop", "0", "--dense-weight", "0.1", "--pixel-mm", "2"]
    trained = CliRunner().invoke(app, [*args, *options, "--geometry", "mirror"])
    assert trained.exit_code == 0, trained.output
    assert selections == [BankSelection((2.0,), "mirror")]
    card = tmp_path / "card.md"
    export_args = ["train", "export-classifier", "--run", str(run), "--out", str(tmp_path / "c.pt")]
    exported = CliRunner().invoke(app, [*export_args, "--card", str(card)])
    assert exported.exit_code == 0, exported.output
    weights = torch.load(tmp_path / "c.pt", weights_only=True)
    assert weights["dense_weight"] == 0.1
    assert weights["training_data"] == {"pixel_mm": [2.0], "geometry": "mirror"}
    text = card.read_text()
    assert "'geometry': 'mirror'" in text and "evidence-map loss weight 0.1" in text
    assert "| 0 | 1.000 |" in text
    with pytest.raises(InputError, match="needs a bank folder"):
        train_classifier(PhantomBank(), tmp_path / "other", steps=1, selection=BankSelection())


def test_bench_classifier_prints_the_card_table_of_a_weights_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer.testing import CliRunner

    from services.cli import app, main

    train_classifier(PhantomBank(), tmp_path / "run", steps=1, batch=2, threads=1, config=TINY)
    weights = export_classifier(tmp_path / "run", tmp_path / "c.pt").path
    result = CliRunner().invoke(app, ["bench", "classifier", "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert "evaluation localisation" in rows[0]
    assert len(rows) == 1 + 10 and all(len(row.split("|")) == 10 for row in rows)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "classifier", "--weights", str(tmp_path / "missing.pt")])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(message.splitlines()) == 1 and "not found" in message


def test_bad_weights_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_classifier(tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "something-else"}, wrong)
    with pytest.raises(InputError, match="not an mrdiff classifier"):
        load_classifier(wrong)
    train_classifier(PhantomBank(), tmp_path / "run", steps=1, batch=2, threads=1, config=TINY)
    exported = export_classifier(tmp_path / "run", tmp_path / "c.pt")
    Path(str(exported.path) + ".sha256").write_text("0" * 64 + "  c.pt\n")
    with pytest.raises(InputError, match="do not match"):
        load_classifier(exported.path)


def test_accuracy_by_noise_level_reports_every_level() -> None:
    magnitudes = [head_phantom(32) * (1 + 0.1 * i) for i in range(3)]
    labelled = labelled_set(magnitudes, family=TRAINING_FAMILY, seed=0)
    assert labelled.images.shape[0] == labelled.labels.shape[0] == 6
    assert labelled.lesion_masks.shape == labelled.heads.shape == (6, 32, 32)
    assert labelled.lesion_masks[labelled.labels == 1].any(axis=(1, 2)).all()
    assert not labelled.lesion_masks[labelled.labels == 0].any()
    rows = accuracy_by_noise_level(
        NoiseAwareClassifier(TINY), DiffusionSchedule.cosine(), labelled, timesteps=(0, 500)
    )
    assert [row.timestep for row in rows] == [0, 500]
    for row in rows:
        assert min(row.accuracy, row.auroc, row.localisation_auroc) >= 0.0
        assert max(row.accuracy, row.auroc, row.localisation_auroc) <= 1.0


def test_localisation_auroc_is_one_for_evidence_exactly_at_the_lesions() -> None:
    """An oracle whose evidence map is the lesion mask localises perfectly, at any noise level."""
    labelled = labelled_set(
        [head_phantom(32) * (1 + 0.1 * i) for i in range(2)], TRAINING_FAMILY, 0
    )
    masks = torch.from_numpy(labelled.lesion_masks).float()[:, None]

    class Oracle(NoiseAwareClassifier):
        def evidence(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return masks.to(x.dtype)  # the whole set is one batch

    rows = accuracy_by_noise_level(
        Oracle(TINY), DiffusionSchedule.cosine(), labelled, (0, 999), batch=len(masks)
    )
    assert [row.localisation_auroc for row in rows] == [1.0, 1.0]


@pytest.mark.slow
def test_short_training_learns_to_tell_lesions_at_low_noise(tmp_path: Path) -> None:
    """A few hundred steps on 64x64 phantoms: the loss falls and clean lesions are recognised."""
    config = ClassifierConfig(channels=(16, 32), norm_groups=4, time_embedding_dim=32)
    bank = PhantomBank(count=8, size=64)
    train_classifier(
        bank, tmp_path / "run", steps=400, batch=8, threads=1, config=config, lr=2e-3, bf16=False
    )
    losses = [
        float(line.split(",")[1])
        for line in (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]
    ]
    assert np.mean(losses[-100:]) < np.mean(losses[:100]) - 0.02
    loaded = load_classifier(export_classifier(tmp_path / "run", tmp_path / "c.pt").path)
    magnitudes = [head_phantom(64) * (0.75 + 0.02 * i) for i in range(24)]
    labelled = labelled_set(magnitudes, TRAINING_FAMILY, seed=123)
    rows = accuracy_by_noise_level(loaded.model, loaded.schedule, labelled, (0, 999))
    assert rows[0].auroc > 0.65
    assert abs(rows[1].auroc - 0.5) < 0.2, "pure noise cannot be classified"


def test_flow_trains_in_chunks_with_the_cli_options_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selections: list[BankSelection | None]
) -> None:
    import logging

    from pipelines import train_classifier_flow as flow_module

    monkeypatch.setattr(flow_module, "create_table_artifact", lambda **_: None)
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))
    for task_name in ("train_classifier_chunk", "export_classifier_task"):
        monkeypatch.setattr(flow_module, task_name, getattr(flow_module, task_name).fn)
    run, out = tmp_path / "run", tmp_path / "c.pt"
    summaries = flow_module.train_classifier_flow.fn(
        "bank",
        str(run),
        steps=2,
        chunk_steps=1,
        batch=2,
        crop=None,
        dense_weight=0.1,
        pixel_mm=[2.0],
        geometry="mirror",
        export_to=str(out),
    )
    assert [row["step"] for row in summaries] == [1, 2]
    assert load_classifier(out).step == 2
    assert selections == [BankSelection((2.0,), "mirror")] * 2
    assert read_classifier_checkpoint(latest_checkpoint(run))["dense_weight"] == 0.1  # type: ignore[arg-type]


def test_tissue_blobs_change_both_images_alike_keep_labels_and_are_recorded(
    tmp_path: Path,
) -> None:
    bank = PhantomBank(size=128)
    plain = LesionPairs(bank, crop=None)[(0, 11)]
    blobs = LesionPairs(bank, crop=None, tissue_blobs=1.0)[(0, 11)]
    assert not torch.equal(blobs.images, plain.images)
    assert torch.equal(blobs.masks, plain.masks) and blobs.labels.tolist() == [0, 1]
    never = LesionPairs(bank, crop=None, tissue_blobs=0.0)[(0, 11)]
    torch.testing.assert_close(never.images, plain.images)
    with pytest.raises(InputError, match="tissue-blobs probability"):
        LesionPairs(bank, tissue_blobs=-0.1)
    run = tmp_path / "run"
    train_classifier(PhantomBank(), run, steps=1, batch=2, config=TINY, crop=None, tissue_blobs=0.5)
    exported = export_classifier(run, tmp_path / "c.pt")
    assert "healthy look-alike blobs on 50%" in load_classifier(exported.path).training


def test_random_appearance_changes_both_images_of_a_pair_alike_and_is_recorded(
    tmp_path: Path,
) -> None:
    bank = PhantomBank(size=64)
    plain = LesionPairs(bank, crop=None)[(0, 11)]
    varied = LesionPairs(bank, crop=None, appearance=1.0)[(0, 11)]
    again = LesionPairs(bank, crop=None, appearance=1.0)[(0, 11)]
    torch.testing.assert_close(varied.images, again.images)
    assert not torch.equal(varied.images, plain.images)
    assert torch.equal(varied.masks, plain.masks) and varied.labels.tolist() == [0, 1]
    assert torch.all(varied.images[:, 1] == 0), "zero phase"
    never = LesionPairs(bank, crop=None, appearance=0.0)[(0, 11)]
    torch.testing.assert_close(never.images, plain.images)
    with pytest.raises(InputError, match="appearance probability"):
        LesionPairs(bank, appearance=1.5)
    run = tmp_path / "run"
    train_classifier(PhantomBank(), run, steps=1, batch=2, config=TINY, crop=None, appearance=0.5)
    exported = export_classifier(run, tmp_path / "c.pt")
    assert "random scanner appearance on 50% of pairs" in load_classifier(exported.path).training
