"""Training the prior on a tiny random data set: loss, resume, checkpoints, export, loading."""

from __future__ import annotations

import csv
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError
from services.recon.prior import load_prior, p99_scale
from services.recon.training import (
    BankSelection,
    StepBatchSampler,
    StepLog,
    TrainResult,
    TrainSettings,
    checkpoint_paths,
    diffusion_loss,
    export_weights,
    iter_train,
    loss_weights,
    read_checkpoint,
    stop_on_signals,
    to_prior_intensity,
    train_prior,
)
from services.recon.unet import UNet, UNetConfig

TINY = UNetConfig(channels=(8, 16), norm_groups=4, time_embedding_dim=16)


class RandomSlices(Dataset[Tensor]):
    """Smooth random complex images (2, 16, 16), float32, like a slice bank yields."""

    def __init__(self, count: int = 12, size: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        coarse = torch.randn(count, 2, size // 4, size // 4, generator=generator)
        self.images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index] * (index + 1)  # varied intensities, normalised in training


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def train(run: Path, steps: int, **options: object) -> object:
    defaults: dict[str, object] = {
        "batch": 4,
        "checkpoint_every": 2,
        "workers": 0,
        "threads": 1,
        "unet_config": TINY,
        "lr": 1e-3,
    }
    defaults.update(options)
    return train_prior(RandomSlices(), run, steps, **defaults)  # type: ignore[arg-type]


def test_step_batches_depend_only_on_seed_and_step() -> None:
    whole = list(StepBatchSampler(100, 4, seed=3, first_step=0, last_step=6))
    tail = list(StepBatchSampler(100, 4, seed=3, first_step=4, last_step=6))
    assert tail == whole[4:] and len(whole) == 6
    assert whole != list(StepBatchSampler(100, 4, seed=4, first_step=0, last_step=6))


def test_images_are_scaled_to_unit_99th_percentile_magnitude() -> None:
    batch = torch.randn(3, 2, 16, 16) * torch.tensor([1.0, 10.0, 100.0])[:, None, None, None]
    scaled = to_prior_intensity(batch)
    torch.testing.assert_close(p99_scale(scaled.norm(dim=1)), torch.ones(3))


def loss_case(timesteps: list[int]) -> tuple[UNet, DiffusionSchedule, Tensor, Tensor, Tensor]:
    """A tiny network with non-zero weights, the schedule, 4 images, their timesteps and noise."""
    torch.manual_seed(0)
    model = UNet(TINY)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x0 = to_prior_intensity(RandomSlices().images[:4])
    return model, DiffusionSchedule.cosine(), x0, torch.tensor(timesteps), torch.randn(4, 2, 16, 16)


def test_bf16_loss_agrees_with_float32_loss() -> None:
    model, schedule, x0, t, noise = loss_case([1, 200, 600, 999])
    fp32 = diffusion_loss(model, schedule, x0, t, noise, bf16=False)
    bf16 = diffusion_loss(model, schedule, x0, t, noise, bf16=True)
    assert bf16.dtype == torch.float32
    assert abs(bf16.item() - fp32.item()) / fp32.item() < 0.02


def test_truncated_snr_weights_rise_with_noise_up_to_the_cap() -> None:
    schedule = DiffusionSchedule.cosine()
    t = torch.arange(0, 1000, 10)
    assert torch.equal(loss_weights(schedule, t, 1.0), torch.ones(len(t)))
    weights = loss_weights(schedule, t, 20.0)
    assert weights.min() == 1.0 and weights.max() == 20.0
    assert bool((weights.diff() >= 0).all())
    abar = float(schedule.alpha_bars[700])
    assert loss_weights(schedule, torch.tensor([700]), 20.0).item() == pytest.approx(
        (1 - abar) / abar, rel=1e-5
    )


def test_weighted_loss_is_the_weighted_mean_of_per_image_errors() -> None:
    model, schedule, x0, t, noise = loss_case([1, 200, 800, 999])
    per_image = torch.stack(
        [
            diffusion_loss(model, schedule, x0[i : i + 1], t[i : i + 1], noise[i : i + 1], False)
            for i in range(4)
        ]
    )
    weighted = diffusion_loss(model, schedule, x0, t, noise, False, snr_weight_cap=20.0)
    expected = (loss_weights(schedule, t, 20.0) * per_image).mean()
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-7)
    simple = diffusion_loss(model, schedule, x0, t, noise, False)
    torch.testing.assert_close(simple, per_image.mean(), rtol=1e-5, atol=1e-7)


def test_snr_weight_cap_below_one_is_refused() -> None:
    with pytest.raises(InputError, match="snr weight cap"):
        TrainSettings(steps=1, snr_weight_cap=0.5).validate()


def test_loss_falls_and_is_logged(tmp_path: Path) -> None:
    train(tmp_path, 30, checkpoint_every=10)
    with (tmp_path / "loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    assert all(float(r["seconds"]) >= 0 for r in rows)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    train(tmp_path / "straight", 4)
    train(tmp_path / "resumed", 2)
    train(tmp_path / "resumed", 4)
    straight = read_checkpoint(checkpoint_paths(tmp_path / "straight")[-1])
    resumed = read_checkpoint(checkpoint_paths(tmp_path / "resumed")[-1])
    assert straight["step"] == resumed["step"] == 4
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0)
    with (tmp_path / "resumed" / "loss.csv").open() as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4"]


def test_sigterm_checkpoints_the_current_step_and_stops(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def terminate_at_step_three(entry: StepLog) -> None:
        if entry.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        result = train(run, 10, checkpoint_every=100, on_step=terminate_at_step_three)
    assert isinstance(result, TrainResult) and result.step == 3
    assert [path.name for path in checkpoint_paths(run)] == ["step_00000003.pt"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    train(run, 5, checkpoint_every=100)  # resumes from step 3
    assert read_checkpoint(checkpoint_paths(run)[-1])["step"] == 5


def test_checkpoints_hold_everything_and_old_ones_are_pruned(tmp_path: Path) -> None:
    result = train(tmp_path, 10, checkpoint_every=2)
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [f"step_{s:08d}.pt" for s in (6, 8, 10)]
    payload = read_checkpoint(paths[-1])
    assert {
        "model",
        "ema",
        "optimizer",
        "step",
        "rng",
        "unet_config",
        "settings",
        "schedule",
    } <= set(payload)
    assert UNetConfig.from_dict(payload["unet_config"]) == TINY
    assert not list(tmp_path.glob("**/*.tmp"))
    assert result.step == 10  # type: ignore[attr-defined]


def test_reaching_the_target_again_does_nothing(tmp_path: Path) -> None:
    train(tmp_path, 2)
    before = checkpoint_paths(tmp_path)[-1].stat().st_mtime_ns
    assert list(iter_train(RandomSlices(), tmp_path, TrainSettings(steps=2, batch=4))) == []
    assert checkpoint_paths(tmp_path)[-1].stat().st_mtime_ns == before


def test_existing_run_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    train(tmp_path, 2)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train(tmp_path, 4, resume=False)
    with pytest.raises(InputError, match="differs"):
        train(tmp_path, 4, unet_config=UNetConfig(channels=(8, 8), norm_groups=4))


def test_bad_settings_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch"):
        train(tmp_path, 2, batch=0)
    with pytest.raises(InputError, match="workers"):
        train(tmp_path, 2, workers=4)
    with pytest.raises(InputError, match="bank folder not found"):
        train_prior(tmp_path / "missing", tmp_path / "run", 1)


def test_export_writes_small_ema_weights_that_load(tmp_path: Path) -> None:
    train(tmp_path / "run", 4)
    exported = export_weights(tmp_path / "run", tmp_path / "prior.pt", name="tiny")
    sidecar = (tmp_path / "prior.pt.sha256").read_text().split()
    assert sidecar == [exported.sha256, "prior.pt"]
    assert exported.step == 4 and exported.size_bytes < 1_000_000
    prior = load_prior(exported.path, device="cpu")
    assert prior.name == "tiny" and prior.sha256 == exported.sha256 and prior.step == 4
    assert prior.config == TINY and prior.schedule.num_timesteps == 1000
    assert not prior.model.training
    ema = read_checkpoint(checkpoint_paths(tmp_path / "run")[-1])["ema"]
    for name, value in prior.model.state_dict().items():
        torch.testing.assert_close(value, ema[name])


def test_export_without_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no checkpoint"):
        export_weights(tmp_path, tmp_path / "prior.pt")


def test_loader_rejects_missing_malformed_and_tampered_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_prior(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="unreadable"):
        load_prior(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(InputError, match="not an mrdiff prior"):
        load_prior(other)
    train(tmp_path / "run", 2)
    exported = export_weights(tmp_path / "run", tmp_path / "prior.pt")
    payload = torch.load(exported.path, weights_only=True)
    payload["state_dict"].pop("head.bias")
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(InputError, match="malformed"):
        load_prior(broken)
    (tmp_path / "prior.pt.sha256").write_text("0" * 64 + "  prior.pt\n")
    with pytest.raises(InputError, match="do not match"):
        load_prior(exported.path)


def test_flow_chunks_cover_the_remaining_steps() -> None:
    from pipelines.train_flow import chunk_targets

    assert chunk_targets(0, 1200, 500) == [500, 1000, 1200]
    assert chunk_targets(700, 1200, 500) == [1000, 1200]
    assert chunk_targets(1000, 1000, 500) == []
    assert chunk_targets(0, 300, 500) == [300]


def test_cli_trains_exports_and_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from services.cli import app
    from services.commands import train as train_commands
    from services.recon import training

    selections: list[BankSelection | None] = []

    def open_random_bank(_: Path, selection: BankSelection | None) -> RandomSlices:
        selections.append(selection)
        return RandomSlices()

    monkeypatch.setattr(training, "open_bank", open_random_bank)
    monkeypatch.setattr(training, "DEFAULT_UNET", TINY)
    bank, run = tmp_path / "bank", tmp_path / "run"
    bank.mkdir()
    runner = CliRunner()
    common = ["--bank", str(bank), "--run", str(run), "--batch", "4", "--threads", "1"]
    trained = runner.invoke(app, ["train", "prior", *common, "--steps", "3"])
    assert trained.exit_code == 0, trained.output
    assert "at step 3/3" in trained.output
    upright = ["--pixel-mm", "2", "--geometry", "mirror"]
    resumed = runner.invoke(app, ["train", "prior", *common, "--steps", "4", *upright])
    assert "resuming from" in resumed.output and "at step 4/4" in resumed.output
    assert selections == [BankSelection(), BankSelection((2.0,), "mirror")]

    weights = tmp_path / "prior.pt"
    exported = runner.invoke(app, ["train", "export", "--run", str(run), "--out", str(weights)])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "prior.pt.sha256").is_file()
    recorded = torch.load(weights, weights_only=True)["training_data"]
    assert recorded == {"pixel_mm": [2.0], "geometry": "mirror"}

    grid = tmp_path / "grid.png"
    args = ["sample-prior", "--weights", str(weights), "--seeds", "0-2,7", "--steps", "3"]
    sampled = runner.invoke(app, [*args, "--size", "16", "--out", str(grid)])
    assert sampled.exit_code == 0, sampled.output
    from PIL import Image

    with Image.open(grid) as picture:
        assert "research use only" in picture.info["Disclaimer"]
    assert train_commands.parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(InputError):
        train_commands.parse_seeds("3-1")
    again = runner.invoke(app, [*args, "--size", "16", "--out", str(grid)])
    assert again.exit_code != 0 and isinstance(again.exception, InputError)
    magnitude = runner.invoke(app, ["train", "prior", *common, "--steps", "5", "--zero-phase"])
    assert magnitude.exit_code == 0, magnitude.output
    assert selections[-1] == BankSelection(zero_phase=True)


def test_cli_attention_applies_to_new_runs_and_refuses_a_run_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.cli import app
    from services.recon import training

    monkeypatch.setattr(training, "open_bank", lambda *_: RandomSlices())
    monkeypatch.setattr(training, "DEFAULT_UNET", TINY)
    runner = CliRunner()

    def invoke(run: Path, steps: int, *extra: str) -> object:
        common = ["--bank", str(tmp_path), "--run", str(run), "--batch", "4", "--threads", "1"]
        return runner.invoke(app, ["train", "prior", *common, "--steps", str(steps), *extra])

    attended = invoke(tmp_path / "attn", 1, "--attention")
    assert attended.exit_code == 0, attended.output  # type: ignore[attr-defined]
    saved = read_checkpoint(checkpoint_paths(tmp_path / "attn")[-1])["unet_config"]
    assert saved["attention_at_coarsest"] is True
    assert invoke(tmp_path / "attn", 2, "--attention").exit_code == 0  # type: ignore[attr-defined]
    assert invoke(tmp_path / "plain", 1).exit_code == 0  # type: ignore[attr-defined]
    refused = invoke(tmp_path / "plain", 2, "--attention")
    error = refused.exception  # type: ignore[attr-defined]
    assert isinstance(error, InputError) and "differs from the checkpoint" in str(error)


# --- fine-tuning: a new run started from exported weights (--init-from) ---------------------


@pytest.fixture(scope="module")
def exported_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights exported from a 2-step run of the tiny network (the "shipped" prior here)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("shipped")
    train(folder / "run", 2)
    return export_weights(folder / "run", folder / "prior.pt", name="tiny-shipped").path


def test_init_from_starts_model_and_ema_at_the_exported_weights(
    tmp_path: Path, exported_prior: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.recon import training

    monkeypatch.setattr(training, "DEFAULT_UNET", UNetConfig(channels=(8, 8), norm_groups=4))
    run = training.prepare_prior_run(
        tmp_path, TrainSettings(steps=2), threads=1, init_from=exported_prior
    )
    shipped = load_prior(exported_prior, device="cpu")
    assert run.state.step == 0 and not run.state.optimizer.state
    assert run.state.unet_config == TINY  # the file's architecture, not the default
    for model in (run.state.model, run.state.ema_model):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, shipped.model.state_dict()[name], rtol=0, atol=0)
    assert run.extra["init_from"] == {"sha256": shipped.sha256, "name": "tiny-shipped", "step": 2}
    assert run.schedule.num_timesteps == shipped.schedule.num_timesteps


def test_attention_added_to_initial_weights_starts_as_the_same_function(
    tmp_path: Path, exported_prior: Path
) -> None:
    from services.recon import training

    run = training.prepare_prior_run(
        tmp_path, TrainSettings(steps=2), threads=1, init_from=exported_prior, attention=True
    )
    shipped = load_prior(exported_prior, device="cpu").model
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([10, 900])
    assert run.state.unet_config.attention_at_coarsest
    for model in (run.state.model, run.state.ema_model):
        torch.testing.assert_close(model.eval()(x, t), shipped(x, t))
    result = train(tmp_path / "run", 2, init_from=exported_prior, unet_config=None, attention=True)
    assert result.step == 2  # type: ignore[attr-defined]
    other = replace(TINY, channels=(8, 8))
    with pytest.raises(InputError, match="differs from the architecture"):
        training.prepare_prior_run(
            tmp_path / "other", TrainSettings(steps=2), other, threads=1, init_from=exported_prior
        )


def test_fine_tuning_run_trains_and_its_export_records_the_init(
    tmp_path: Path, exported_prior: Path
) -> None:
    shipped_sha256 = load_prior(exported_prior, device="cpu").sha256
    result = train(tmp_path / "run", 2, init_from=exported_prior, unet_config=None)
    assert result.step == 2  # type: ignore[attr-defined]
    checkpoint = read_checkpoint(checkpoint_paths(tmp_path / "run")[-1])
    assert checkpoint["init_from"]["sha256"] == shipped_sha256
    again = train(tmp_path / "run", 3, init_from=exported_prior)  # same init: resumes
    assert again.step == 3  # type: ignore[attr-defined]
    exported = export_weights(tmp_path / "run", tmp_path / "tuned.pt")
    assert exported.init_sha256 == shipped_sha256
    assert torch.load(exported.path, weights_only=True)["init_from"]["sha256"] == shipped_sha256
    assert load_prior(exported.path, device="cpu").step == 3


def test_init_from_on_a_run_with_foreign_checkpoints_exits_2(
    tmp_path: Path,
    exported_prior: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main
    from services.recon import training

    selections: list[BankSelection | None] = []

    def open_random_bank(_: Path, selection: BankSelection | None) -> RandomSlices:
        selections.append(selection)
        return RandomSlices()

    monkeypatch.setattr(training, "open_bank", open_random_bank)
    run = tmp_path / "run"
    train(run, 2)  # from scratch
    before = [path.read_bytes() for path in checkpoint_paths(run)]
    args = ["train", "prior", "--bank", str(tmp_path), "--run", str(run), "--steps", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--threads", "1", "--init-from", str(exported_prior)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    assert "--init-from" in message and "from scratch" in message
    assert [path.read_bytes() for path in checkpoint_paths(run)] == before


def test_flow_passes_init_from_to_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from pipelines import train_flow

    real_chunk = train_flow.train_chunk
    chunks: list[dict[str, object]] = []
    monkeypatch.setattr(
        train_flow, "train_chunk", lambda bank, run, target, settings: chunks.append(settings)
    )
    monkeypatch.setattr(train_flow, "create_table_artifact", lambda **_: None)
    train_flow.train_prior_flow.fn(
        "bank",
        "run",
        steps=2,
        chunk_steps=1,
        init_from="w.pt",
        pixel_mm=[2.0],
        geometry="mirror",
        attention=True,
    )
    assert [chunk["init_from"] for chunk in chunks] == ["w.pt", "w.pt"]
    assert chunks[0]["selection"] == BankSelection((2.0,), "mirror")
    assert chunks[0]["attention"] is True

    calls: list[dict[str, object]] = []

    def fake_train_prior(*args: object, **kwargs: object) -> TrainResult:
        calls.append(kwargs)
        return TrainResult(Path("run"), 1, None, None, None)

    monkeypatch.setattr(train_flow, "train_prior", fake_train_prior)
    monkeypatch.setattr(train_flow, "get_run_logger", lambda: logging.getLogger("test"))
    real_chunk.fn("bank", "run", 1, chunks[0])
    assert calls[0]["init_from"] == "w.pt"
