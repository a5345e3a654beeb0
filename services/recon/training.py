"""Training the diffusion prior: epsilon prediction with AdamW, EMA weights and checkpoints.

The objective is the "simple" loss of Ho et al. (DDPM, NeurIPS 2020): ``|| eps - eps_theta(
sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2`` with ``t`` uniform, on the cosine schedule of
Nichol & Dhariwal (2021). Images are complex (2 channels) and scaled to the prior's intensity
convention (99th percentile magnitude = 1, :func:`services.recon.prior.p99_scale`).

Everything random in step ``k`` (which slices, which timesteps, which noise) comes from a
generator seeded by ``(seed, k)``, so a run resumed from a checkpoint takes the same steps as one
that never stopped. Checkpoints are written atomically to ``run_dir/checkpoints/`` and hold the
model, its EMA, the optimiser, the step, RNG states and the configuration. This module knows
nothing of Prefect or the CLI; they call :func:`train_prior` / :func:`iter_train`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError
from services.recon.init_weights import (
    INIT_KEY,
    check_resumed_init,
    init_record,
    read_init_weights,
    recorded_init_sha256,
    start_from,
)
from services.recon.precision import bf16_autocast
from services.recon.prior import (
    INTENSITY_CONVENTION,
    RESEARCH_USE_ONLY,
    WEIGHTS_FORMAT,
    WEIGHTS_FORMAT_VERSION,
    p99_scale,
    pick_device,
    sha256_of,
)
from services.recon.unet import UNet, UNetConfig, to_device

CHECKPOINT_DIR = "checkpoints"
LOSS_LOG = "loss.csv"
THREADS_ENV = "MRDIFF_TORCH_THREADS"
DEFAULT_UNET = UNetConfig()
"""Architecture of a new run when none is given (a resumed run keeps its own)."""

TRAINING_DATA_KEY = "training_data"


@dataclass(frozen=True)
class BankSelection:
    """Which slices of a bank a prior trains on, and how they are augmented.

    ``pixel_mm`` keeps only slices at these pixel sizes (None: all); ``geometry`` is the
    augmentation of :class:`services.recon.data.bank.SliceBank` (``mirror`` keeps scans upright);
    ``zero_phase`` replaces each complex slice by its magnitude with zero phase (a prior of
    magnitude images, as the anomaly maps feed it). Recorded in checkpoints and exported weights
    under ``training_data``.
    """

    pixel_mm: tuple[float, ...] | None = None
    geometry: str = "dihedral"
    zero_phase: bool = False

    @classmethod
    def from_options(
        cls, pixel_mm: Sequence[float] | None, geometry: str, zero_phase: bool = False
    ) -> BankSelection:
        """From the ``--pixel-mm`` (repeatable, may be empty), ``--geometry`` and
        ``--zero-phase`` options."""
        return cls(tuple(pixel_mm) if pixel_mm else None, geometry, zero_phase)

    def to_dict(self) -> dict[str, Any]:
        recorded: dict[str, Any] = {
            "pixel_mm": list(self.pixel_mm) if self.pixel_mm else None,
            "geometry": self.geometry,
        }
        if self.zero_phase:
            recorded["zero_phase"] = True
        return recorded


class ZeroPhase(Dataset[Tensor]):
    """``(2, H, W)`` complex slices of ``slices`` as their magnitude with zero phase."""

    def __init__(self, slices: Dataset[Tensor]) -> None:
        self.slices = slices

    def __len__(self) -> int:
        return len(self.slices)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tensor:
        complex_slice = self.slices[index]
        magnitude = torch.linalg.vector_norm(complex_slice, dim=0)
        return torch.stack([magnitude, torch.zeros_like(magnitude)])


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of a run (``steps`` is the run's total, not an increment)."""

    steps: int
    batch: int = 16
    lr: float = 2e-4
    ema: float = 0.999
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    bf16: bool = True
    workers: int = 0
    snr_weight_cap: float = 1.0
    """Cap of the truncated-SNR loss weight (:func:`loss_weights`); 1 is the simple loss."""

    def validate(self) -> None:
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise InputError(f"ema must be in [0, 1), got {self.ema}")
        if self.checkpoint_every < 1:
            raise InputError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.workers not in (0, 1):
            raise InputError(f"workers must be 0 or 1 on this machine, got {self.workers}")
        if not self.snr_weight_cap >= 1:
            raise InputError(f"snr weight cap must be >= 1, got {self.snr_weight_cap}")


class StepLog(NamedTuple):
    """One finished optimisation step."""

    step: int
    total_steps: int
    loss: float
    seconds: float


class TrainResult(NamedTuple):
    """Where a run stands after :func:`train_prior`."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    last_loss: float | None
    seconds_per_step: float | None


class ExportedWeights(NamedTuple):
    """A weights file written by :func:`export_weights`."""

    path: Path
    sha256: str
    step: int
    size_bytes: int
    init_sha256: str | None = None
    """SHA-256 of the weights the run was fine-tuned from (None: trained from scratch)."""


def default_threads() -> int:
    """Torch threads: ``$MRDIFF_TORCH_THREADS`` if set, else every core this process may use."""
    from_env = os.environ.get(THREADS_ENV)
    if from_env:
        return max(1, int(from_env))
    return max(1, len(os.sched_getaffinity(0)))


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class StepBatchSampler(Sampler[list[int]]):
    """Batch indices for steps ``first_step .. last_step - 1``; step k is drawn from (seed, k)."""

    def __init__(self, size: int, batch: int, seed: int, first_step: int, last_step: int) -> None:
        self.size, self.batch, self.seed = size, batch, seed
        self.first_step, self.last_step = first_step, last_step

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step):
            generator = _step_generator(self.seed, step)
            yield torch.randint(self.size, (self.batch,), generator=generator).tolist()


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The most advanced checkpoint of a run, or None."""
    paths = checkpoint_paths(run_dir)
    return paths[-1] if paths else None


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def loss_weights(schedule: DiffusionSchedule, t: Tensor, cap: float) -> Tensor:
    """Per-sample weights ``clamp((1 - abar_t) / abar_t, 1, cap)`` of the noise-prediction MSE.

    The clean image implied by an epsilon prediction has error ``sqrt((1 - abar) / abar)``
    times the epsilon error, so the simple loss (weight 1) barely trains the high-noise steps
    whose clean-image estimates set the global layout of a sample. Weighting by ``max(1, 1/SNR)``
    is the epsilon form of the "truncated SNR" x0 loss of Salimans & Ho ("Progressive
    Distillation for Fast Sampling of Diffusion Models", ICLR 2022), capped because
    ``1/SNR`` grows without bound at pure noise. ``cap = 1`` gives the simple loss.
    """
    abar = schedule.alpha_bars.to(t.device)[t.long()]
    return ((1 - abar) / abar).clamp(1.0, cap).float()


def diffusion_loss(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    bf16: bool = True,
    snr_weight_cap: float = 1.0,
) -> Tensor:
    """Mean squared error of the noise prediction, in float32: the "simple" loss of Ho et al.
    (2020), optionally weighted toward high noise levels (:func:`loss_weights`)."""
    x_t = schedule.q_sample(x0, t, noise).contiguous(memory_format=torch.channels_last)
    with bf16_autocast(x0.device, bf16):
        predicted = model(x_t, t)
    if snr_weight_cap <= 1:
        return F.mse_loss(predicted.float(), noise)
    per_sample = (predicted.float() - noise).square().flatten(1).mean(dim=1)
    return (loss_weights(schedule, t, snr_weight_cap) * per_sample).mean()


def to_prior_intensity(batch: Tensor) -> Tensor:
    """Scale each (2, H, W) image so its 99th percentile magnitude is 1."""
    magnitude = torch.linalg.vector_norm(batch, dim=1)
    return batch / p99_scale(magnitude)[:, None, None, None]


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * weights`` for parameters and buffers."""
    for ema_p, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p.detach(), 1 - decay)
    for ema_b, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)


def _ema_decay(target: float, step: int) -> float:
    """EMA decay warmed up over the first steps so short runs do not keep the init."""
    return min(target, (1 + step) / (10 + step))


class TrainState:
    """Model, EMA copy, AdamW optimiser and step of a run; one optimisation step; checkpoints.

    Shared by the prior (:func:`iter_train`) and the anomaly classifier
    (:mod:`services.recon.classifier_training`): subclasses only build their networks.
    """

    def __init__(self, model: nn.Module, ema_model: nn.Module, settings: TrainSettings) -> None:
        self.model = model
        self.ema_model = ema_model
        self.ema_model.load_state_dict(self.model.state_dict())
        self.ema_model.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            foreach=True,
        )
        self.step = 0

    def optimise(self, loss: Tensor, settings: TrainSettings) -> float:
        """Backpropagate ``loss``, clip, step the optimiser and the EMA; returns the loss value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        update_ema(self.ema_model, self.model, _ema_decay(settings.ema, self.step))
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged at step {self.step}: loss {value}")
        return value

    def save(self, path: Path, settings: TrainSettings, extra: dict[str, Any]) -> None:
        """Checkpoint model, EMA, optimiser, step, RNG states, settings and ``extra``."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        _atomic_torch_save(
            {
                **extra,
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "settings": asdict(settings),
            },
            path,
        )

    def load(self, payload: dict[str, Any], lr: float) -> None:
        """Continue from a checkpoint written by :meth:`save` (with learning rate ``lr``)."""
        self.model.load_state_dict(payload["model"])
        self.ema_model.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step = int(payload["step"])
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])


class _RunState(TrainState):
    """The prior's run: a UNet and its EMA copy."""

    def __init__(
        self, unet_config: UNetConfig, settings: TrainSettings, device: torch.device
    ) -> None:
        torch.manual_seed(settings.seed)
        self.unet_config = unet_config
        super().__init__(
            to_device(UNet(unet_config), device), to_device(UNet(unet_config), device), settings
        )


_stop_requested = threading.Event()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT or SIGTERM asks the training loop to checkpoint the step it is on and
    stop (instead of losing the steps since the last checkpoint). Main thread only (the CLI)."""

    def request_stop(signum: int, frame: object) -> None:
        _stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_requested.clear()


def stop_requested() -> bool:
    """True once :func:`stop_on_signals` caught a signal; training loops end after the step."""
    return _stop_requested.is_set()


class StepRecorder:
    """``loss.csv`` rows, step timing and checkpoints every ``checkpoint_every`` steps.

    ``save(path)`` writes a checkpoint; older checkpoints beyond ``keep_checkpoints`` are pruned.
    """

    def __init__(
        self,
        writer: Any,
        handle: Any,
        run_path: Path,
        settings: TrainSettings,
        save: Callable[[Path], None],
    ) -> None:
        self.writer, self.handle = writer, handle
        self.run_path, self.settings, self.save = run_path, settings, save
        self.started = time.perf_counter()
        self.saved_step: int | None = None

    def record(self, step: int, loss: float, extra: tuple[str, ...] = ()) -> StepLog:
        """Log step ``step`` (checkpointing when due) and return its :class:`StepLog`."""
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.writer.writerow([step, f"{loss:.6f}", f"{seconds:.3f}", *extra])
        self.handle.flush()
        if step % self.settings.checkpoint_every == 0 or step == self.settings.steps:
            self.checkpoint(step)
        return StepLog(step, self.settings.steps, loss, seconds)

    def checkpoint(self, step: int) -> None:
        """Write the checkpoint of ``step`` (once) and prune old ones."""
        if step == self.saved_step:
            return
        self.save(self.run_path / CHECKPOINT_DIR / f"step_{step:08d}.pt")
        _prune_checkpoints(self.run_path, self.settings.keep_checkpoints)
        self.saved_step = step


def load_checkpoint(path: Path, keys: tuple[str, ...], kind: str) -> dict[str, Any]:
    """Load a checkpoint on the CPU (plain tensors and values only); without all of ``keys``
    it is not an mrdiff ``kind`` checkpoint (:class:`InputError`)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"checkpoint {path} is unreadable: {error}") from error
    if not isinstance(payload, dict) or any(key not in payload for key in keys):
        raise InputError(f"{path} is not an mrdiff {kind} checkpoint")
    return payload


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint of the prior on the CPU."""
    return load_checkpoint(path, ("ema", "unet_config"), "training")


def latest_payload(run_dir: str | Path, read: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The latest checkpoint of a run, loaded with ``read``; :class:`InputError` if none."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise InputError(f"no checkpoint in {run_dir}; train first")
    return read(checkpoint)


def _truncate_loss_log(path: Path, last_step: int) -> None:
    """Drop log rows past the checkpoint we resume from (written after it, then lost)."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0], *(row for row in rows[1:] if row and int(row[0]) <= last_step)]
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(temporary, path)


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


# --- the run every trainer shares: set-up, resume, loss log, checkpoints, stop on signal ------


class RunStart(NamedTuple):
    """A run about to (re)start: its folder, device and the checkpoint it resumes, if any."""

    path: Path
    device: torch.device
    payload: dict[str, Any] | None


def start_run(
    run_dir: str | Path,
    settings: TrainSettings,
    resume: bool,
    threads: int | None,
    device: str | torch.device | None,
    read: Callable[[Path], dict[str, Any]],
) -> RunStart:
    """Validate ``settings``, set torch threads, pick the device and ``read`` the latest
    checkpoint; without ``resume`` a run folder that holds checkpoints is refused."""
    settings.validate()
    run_path = Path(run_dir)
    torch.set_num_threads(threads or default_threads())
    target = pick_device(device)
    latest = latest_checkpoint(run_path)
    if latest is None:
        return RunStart(run_path, target, None)
    if not resume:
        raise InputError(f"{run_path} already holds checkpoints; resume it or use a new run")
    return RunStart(run_path, target, read(latest))


ConfigT = TypeVar("ConfigT")


def resumed_config(given: ConfigT | None, saved: ConfigT, name: str, run_path: Path) -> ConfigT:
    """The checkpoint's architecture ``saved``; a different one ``given`` is an error."""
    if given is not None and given != saved:
        raise InputError(f"{name} differs from the checkpoint in {run_path}")
    return saved


BatchT = TypeVar("BatchT")


def iter_steps(
    state: TrainState,
    run_path: Path,
    settings: TrainSettings,
    extra: dict[str, Any],
    columns: tuple[str, ...],
    batches: Callable[[], Iterable[BatchT]],
    loss_of: Callable[[BatchT], tuple[Tensor, tuple[str, ...]]],
) -> Iterator[StepLog]:
    """Optimise ``state`` on ``batches()`` up to ``settings.steps``, yielding a step log each.

    ``loss_of`` gives a batch's loss and its values of the extra loss.csv ``columns``;
    checkpoints hold ``extra`` beside :meth:`TrainState.save`'s fields. Loss-log rows past the
    resumed step are dropped first; a signal (:func:`stop_on_signals`) checkpoints and stops.
    """
    run_path.mkdir(parents=True, exist_ok=True)
    log_path = run_path / LOSS_LOG
    _truncate_loss_log(log_path, state.step)
    if state.step >= settings.steps:
        return
    loader = batches()
    new_log = not log_path.is_file()
    with log_path.open("a", newline="") as log_handle:
        log = csv.writer(log_handle)
        if new_log:
            log.writerow(["step", "loss", "seconds", *columns])
        recorder = StepRecorder(
            log, log_handle, run_path, settings, lambda path: state.save(path, settings, extra)
        )
        state.model.train()
        for batch in loader:
            loss, values = loss_of(batch)
            loss_value = state.optimise(loss, settings)
            yield recorder.record(state.step, loss_value, values)
            if stop_requested():
                recorder.checkpoint(state.step)
                return


def drain_run(
    entries: Iterable[StepLog],
    run_dir: str | Path,
    read: Callable[[Path], dict[str, Any]],
    on_step: Callable[[StepLog], None] | None,
) -> TrainResult:
    """Run a trainer's steps to the end (``on_step`` sees each) and say where the run stands."""
    last: StepLog | None = None
    durations: list[float] = []
    for entry in entries:
        last = entry
        durations.append(entry.seconds)
        if on_step is not None:
            on_step(entry)
    checkpoint = latest_checkpoint(run_dir)
    step = int(read(checkpoint)["step"]) if checkpoint else 0
    steady = durations[1:] or durations
    return TrainResult(
        run_dir=Path(run_dir),
        step=step,
        checkpoint=checkpoint,
        last_loss=last.loss if last else None,
        seconds_per_step=sum(steady) / len(steady) if steady else None,
    )


class PriorRun(NamedTuple):
    """A prior run ready for its next step: where it is, its state, schedule and what every
    checkpoint holds besides the state (architecture, schedule, initial weights)."""

    start: RunStart
    state: _RunState
    schedule: DiffusionSchedule
    extra: dict[str, Any]


def prepare_prior_run(
    run_dir: str | Path,
    settings: TrainSettings,
    unet_config: UNetConfig | None = None,
    resume: bool = True,
    threads: int | None = None,
    device: str | torch.device | None = None,
    init_from: str | Path | None = None,
    attention: bool = False,
) -> PriorRun:
    """The run's state before its next step: resumed from the latest checkpoint, started from
    the weights file ``init_from`` (:mod:`services.recon.init_weights`), or new.

    A resumed run keeps its architecture and schedule (a conflicting ``unet_config`` is an
    error) and refuses an ``init_from`` its checkpoints do not record; a run started from
    weights takes the file's architecture and schedule, with a fresh optimiser at step 0.
    ``attention`` gives the network the coarsest-scale attention block (added at zero to
    ``init_from`` weights); a resumed run must already have it.
    """
    run = start_run(run_dir, settings, resume, threads, device, read_checkpoint)
    init = read_init_weights(init_from) if init_from is not None else None
    record: dict[str, Any] | None = init_record(init) if init is not None else None
    schedule = DiffusionSchedule.cosine()
    config = unet_config or DEFAULT_UNET
    if run.payload is not None:
        if init is not None:
            check_resumed_init(run.payload, init, run.path)
        saved = UNetConfig.from_dict(run.payload["unet_config"])
        config = resumed_config(unet_config, saved, "unet_config", run.path)
        if "schedule" in run.payload:
            schedule = DiffusionSchedule.from_dict(run.payload["schedule"])
        record = run.payload.get(INIT_KEY)
    elif init is not None:
        if unet_config is not None and unet_config != init.config:
            raise InputError(f"unet_config differs from the architecture of {init.path.name}")
        config, schedule = init.config, init.schedule
    if attention and not config.attention_at_coarsest:
        if run.payload is not None:
            raise InputError(
                f"unet_config differs from the checkpoint in {run.path}: it has no attention "
                "block (attention is chosen when a run starts)"
            )
        config = replace(config, attention_at_coarsest=True)
    state = _RunState(config, settings, run.device)
    if run.payload is not None:
        state.load(run.payload, settings.lr)
    elif init is not None:
        start_from(init, state.model, state.ema_model)
    extra = {"unet_config": config.to_dict(), "schedule": schedule.to_dict()}
    if record is not None:
        extra[INIT_KEY] = record
    return PriorRun(run, state, schedule, extra)


def iter_train(
    dataset: Dataset[Tensor],
    run_dir: str | Path,
    settings: TrainSettings,
    unet_config: UNetConfig | None = None,
    resume: bool = True,
    threads: int | None = None,
    device: str | torch.device | None = None,
    init_from: str | Path | None = None,
    training_data: dict[str, Any] | None = None,
    attention: bool = False,
) -> Iterator[StepLog]:
    """Train until ``settings.steps`` total steps, yielding a :class:`StepLog` per step.

    With ``resume`` the latest checkpoint in ``run_dir`` is continued (its architecture wins;
    a conflicting ``unet_config`` is an error). Without it, a run directory that already holds
    checkpoints is refused rather than overwritten. ``init_from`` starts a new run from a
    weights file (see :func:`prepare_prior_run`). ``training_data`` (what the dataset is, e.g.
    :meth:`BankSelection.to_dict`) is recorded in every checkpoint.
    """
    run, state, schedule, extra = prepare_prior_run(
        run_dir, settings, unet_config, resume, threads, device, init_from, attention
    )
    if training_data is not None:
        extra[TRAINING_DATA_KEY] = training_data
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise InputError("training set is empty")

    def batches() -> DataLoader[Tensor]:
        sampler = StepBatchSampler(
            len(dataset),  # type: ignore[arg-type]
            settings.batch,
            settings.seed,
            state.step,
            settings.steps,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=settings.workers,
            pin_memory=run.device.type == "cuda",
        )

    def loss_of(images: Tensor) -> tuple[Tensor, tuple[str, ...]]:
        generator = _step_generator(settings.seed + 1, state.step)
        x0 = to_prior_intensity(images.float())
        t = torch.randint(schedule.num_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x0, t, noise = x0.to(run.device), t.to(run.device), noise.to(run.device)
        loss = diffusion_loss(
            state.model, schedule, x0, t, noise, settings.bf16, settings.snr_weight_cap
        )
        return loss, ()

    yield from iter_steps(state, run.path, settings, extra, (), batches, loss_of)


def open_bank(bank_dir: str | Path, selection: BankSelection | None = None) -> Dataset[Tensor]:
    """The training slices of a bank folder (:class:`services.recon.data.bank.SliceBank`),
    restricted and augmented as ``selection`` says (default: every slice, dihedral)."""
    path = Path(bank_dir)
    if not path.is_dir():
        raise InputError(f"training bank folder not found: {path}")
    from services.recon.data.bank import SliceBank, indices_at_pixel_sizes

    selection = selection or BankSelection()
    bank: Dataset[Tensor] = SliceBank(path, geometry=selection.geometry)  # type: ignore[arg-type]
    if selection.pixel_mm:
        bank = Subset(bank, indices_at_pixel_sizes(path, selection.pixel_mm))
    return ZeroPhase(bank) if selection.zero_phase else bank


def training_slices(
    bank: str | Path | Dataset[Tensor], selection: BankSelection | None
) -> tuple[Dataset[Tensor], dict[str, Any] | None]:
    """A bank folder opened as ``selection`` says (:func:`open_bank`), or a dataset as it is,
    with what to record as ``training_data`` (None for a dataset, which cannot be selected)."""
    if isinstance(bank, Dataset):
        if selection is not None:
            raise InputError("a slice selection needs a bank folder, not a dataset")
        return bank, None
    selection = selection or BankSelection()
    return open_bank(bank, selection), selection.to_dict()


def train_prior(
    bank_dir: str | Path | Dataset[Tensor],
    run_dir: str | Path,
    steps: int,
    batch: int = 16,
    lr: float = 2e-4,
    ema: float = 0.999,
    seed: int = 0,
    resume: bool = True,
    threads: int | None = None,
    checkpoint_every: int = 250,
    workers: int = 0,
    bf16: bool = True,
    device: str | torch.device | None = None,
    unet_config: UNetConfig | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    init_from: str | Path | None = None,
    snr_weight_cap: float = 1.0,
    selection: BankSelection | None = None,
    attention: bool = False,
) -> TrainResult:
    """Train (or continue training) the prior in ``run_dir`` up to ``steps`` total steps.

    ``bank_dir`` is a slice-bank folder or any Dataset of float32 (2, H, W) tensors. Device is
    CUDA when available, else CPU with channels_last; bf16 autocast where it is native
    (:mod:`services.recon.precision`). ``on_step`` sees each :class:`StepLog` (progress bars,
    flows). ``init_from``: a prior weights file a new run
    starts from (fine-tuning; :mod:`services.recon.init_weights`). ``snr_weight_cap`` > 1
    weights the loss toward high noise levels (:func:`loss_weights`). ``selection`` picks and
    augments the bank's slices (:class:`BankSelection`; only for a bank folder). ``attention``:
    see :func:`prepare_prior_run`.
    """
    dataset, training_data = training_slices(bank_dir, selection)
    settings = TrainSettings(
        steps=steps,
        batch=batch,
        lr=lr,
        ema=ema,
        seed=seed,
        checkpoint_every=checkpoint_every,
        workers=workers,
        bf16=bf16,
        snr_weight_cap=snr_weight_cap,
    )
    entries = iter_train(
        dataset,
        run_dir,
        settings,
        unet_config,
        resume,
        threads,
        device,
        init_from,
        training_data,
        attention,
    )
    return drain_run(entries, run_dir, read_checkpoint, on_step)


def export_weights(
    run_dir: str | Path, out_path: str | Path, name: str | None = None
) -> ExportedWeights:
    """Write the EMA weights, architecture and schedule of a run's latest checkpoint, and what
    the run was fine-tuned from (``init_from``: sha256, name, step) when it started from weights.

    The file follows the format of :mod:`services.recon.prior` (loadable with
    :func:`~services.recon.prior.load_prior`); ``<out_path>.sha256`` is written beside it.
    """
    payload = latest_payload(run_dir, read_checkpoint)
    step = int(payload["step"])
    weights = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "name": name or f"mrdiff-prior-step{step}",
        "unet_config": payload["unet_config"],
        "schedule": payload["schedule"],
        "state_dict": {key: value.float() for key, value in payload["ema"].items()},
        "intensity": INTENSITY_CONVENTION,
        "step": step,
        "research_use_only": RESEARCH_USE_ONLY,
    }
    for key in (INIT_KEY, TRAINING_DATA_KEY):
        if key in payload:
            weights[key] = payload[key]
    return write_weights(weights, out_path)


def write_weights(weights: dict[str, Any], out_path: str | Path) -> ExportedWeights:
    """Write a weights payload atomically with a ``<file>.sha256`` sidecar beside it."""
    out = Path(out_path)
    _atomic_torch_save(weights, out)
    digest = sha256_of(out)
    sidecar = out.with_name(out.name + ".sha256")
    temporary = sidecar.with_name(f".{sidecar.name}.tmp")
    temporary.write_text(f"{digest}  {out.name}\n")
    os.replace(temporary, sidecar)
    step = int(weights.get("step", 0))
    return ExportedWeights(
        path=out,
        sha256=digest,
        step=step,
        size_bytes=out.stat().st_size,
        init_sha256=recorded_init_sha256(weights),
    )
