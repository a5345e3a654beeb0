"""Training the noise-aware healthy-vs-lesion classifier used for anomaly maps.

Wolleb et al. (MICCAI 2022) train the classifier of classifier guidance on noised images
``x_t`` of both classes at all noise levels (``t`` uniform), with the diffusion model's own
schedule. Here every batch holds pairs: a healthy training slice and the same slice with a lesion
of :data:`~services.recon.data.lesions.TRAINING_FAMILY`, noised to the same ``t`` with the same
noise, so the only thing that tells the two apart is the lesion. Inputs follow the anomaly maps'
convention: magnitude with zero phase, 99th percentile 1
(:func:`services.recon.classifier.prior_input_from_magnitude`).

Conventions mirror :mod:`services.recon.training` (whose helpers are reused): the batch of step
``k`` is a function of ``(seed, k)``, so a resumed run takes the same steps; atomic checkpoints
of model, EMA, optimiser, RNG and configuration in ``run_dir/checkpoints``; ``loss.csv``; bf16
autocast and channels_last on CPU; export of the EMA weights with a ``.sha256`` sidecar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from services.recon.classifier import (
    APPEARANCE_KEY,
    DEFAULT_WEIGHTS,
    INPUT_CONVENTION,
    TISSUE_BLOBS_KEY,
    WEIGHTS_FORMAT,
    WEIGHTS_FORMAT_VERSION,
    ClassifierConfig,
    LoadedClassifier,
    NoiseAwareClassifier,
    classifier_to_device,
    load_classifier,
    prior_input_from_magnitude,
)
from services.recon.data.appearance import randomise_appearance
from services.recon.data.lesions import TRAINING_FAMILY, LesionFamily, insert_lesion
from services.recon.data.tissue_blobs import paint_tissue_blobs
from services.recon.diffusion import DiffusionSchedule
from services.recon.errors import InputError, check_probability
from services.recon.init_weights import INIT_KEY, check_resumed_init, init_record, start_from
from services.recon.metrics import auroc, foreground_mask
from services.recon.precision import bf16_autocast
from services.recon.prior import RESEARCH_USE_ONLY
from services.recon.training import (
    TRAINING_DATA_KEY,
    BankSelection,
    ExportedWeights,
    StepLog,
    TrainResult,
    TrainSettings,
    TrainState,
    _step_generator,
    drain_run,
    iter_steps,
    latest_payload,
    load_checkpoint,
    resumed_config,
    start_run,
    training_slices,
    write_weights,
)

DEFAULT_CONFIG = ClassifierConfig(channels=(16, 32, 64, 128))
DENSE_WEIGHT = 1.0
"""Weight of the evidence-map loss against the image loss (see :func:`classifier_loss`)."""
DEFAULT_CROP = 64
"""Training window (pixels): a crop around the lesion keeps steps cheap on a shared CPU."""
ACCURACY_TIMESTEPS = (0, 50, 100, 200, 300, 400, 500, 600, 800, 999)


class LabelledPair(NamedTuple):
    """A slice healthy and with a lesion: ``images`` ``(2, 2, h, w)``, ``labels`` ``(2,)``,
    lesion ``masks`` ``(2, h, w)`` (all false for the healthy image).

    Images are classifier inputs (zero phase, each image's 99th percentile = 1); label 1
    marks the lesion image.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor


def crop_window(
    shape: tuple[int, int], size: int | None, center: tuple[float, float], rng: np.random.Generator
) -> tuple[slice, slice]:
    """A ``size`` x ``size`` window that holds ``center`` (jittered by up to a quarter size)."""
    if size is None or (size >= shape[0] and size >= shape[1]):
        return slice(None), slice(None)
    starts = []
    for axis, middle in enumerate(center):
        extent = min(size, shape[axis])
        jitter = rng.uniform(-0.25, 0.25) * extent
        start = round(middle - extent / 2 + jitter)
        starts.append(min(max(start, 0), shape[axis] - extent))
    rows = slice(starts[0], starts[0] + min(size, shape[0]))
    cols = slice(starts[1], starts[1] + min(size, shape[1]))
    return rows, cols


class LesionPairs(Dataset[LabelledPair]):
    """Bank slices, each healthy and with a painted lesion, as classifier inputs.

    Indexed by ``(slice_index, lesion_seed)``. Both images are cut to the same ``crop`` window
    around the lesion (``None``: whole slice), after scaling by the whole slice's 99th
    percentile. A slice with too little brain for a lesion gives two healthy images labelled 0,
    so labels are always true. With probability ``tissue_blobs`` a pair gets healthy look-alike
    blobs (:func:`services.recon.data.tissue_blobs.paint_tissue_blobs`, clear of the lesion),
    then with probability ``appearance`` one random scanner appearance
    (:func:`services.recon.data.appearance.randomise_appearance`); both images alike.
    """

    def __init__(
        self,
        healthy: Dataset[Tensor],
        family: LesionFamily = TRAINING_FAMILY,
        crop: int | None = DEFAULT_CROP,
        appearance: float = 0.0,
        tissue_blobs: float = 0.0,
    ) -> None:
        check_probability("appearance probability", appearance)
        check_probability("tissue-blobs probability", tissue_blobs)
        self.healthy = healthy
        self.family = family
        self.crop = crop
        self.appearance = appearance
        self.tissue_blobs = tissue_blobs

    def __len__(self) -> int:
        return len(self.healthy)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> LabelledPair:
        index, lesion_seed = key
        complex_slice = self.healthy[index]
        magnitude = torch.linalg.vector_norm(complex_slice.float(), dim=0).numpy()
        shape = (int(magnitude.shape[0]), int(magnitude.shape[1]))
        rng = np.random.default_rng([lesion_seed, 7])
        masks = np.zeros((2, *shape), dtype=bool)
        try:
            lesioned = insert_lesion(magnitude, lesion_seed, self.family)
            changed, label, center = lesioned.image, 1, lesioned.params.center
            masks[1] = lesioned.lesion_mask
        except InputError:
            changed, label = magnitude, 0
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        magnitudes = np.stack([magnitude, changed])
        if self.tissue_blobs > 0 and rng.random() < self.tissue_blobs:
            blob_rng = np.random.default_rng([lesion_seed, 11])
            magnitudes = paint_tissue_blobs(magnitudes, masks[1], blob_rng)
        if self.appearance > 0 and rng.random() < self.appearance:
            magnitudes = randomise_appearance(magnitudes, rng)
        pair = torch.from_numpy(magnitudes.astype(np.float32))
        x0, _ = prior_input_from_magnitude(pair)
        rows, cols = crop_window(shape, self.crop, center, rng)
        return LabelledPair(
            x0[:, :, rows, cols].contiguous(),
            torch.tensor([0, label]),
            torch.from_numpy(masks[:, rows, cols].copy()),
        )


class PairedStepSampler(Sampler[list[tuple[int, int]]]):
    """Keys for steps ``first_step .. last_step - 1``: ``batch // 2`` (slice, lesion seed) pairs.

    Everything is drawn from ``(seed, step)``, so a resumed run sees the same pairs.
    """

    def __init__(self, size: int, batch: int, seed: int, first_step: int, last_step: int) -> None:
        if batch < 2 or batch % 2:
            raise InputError(f"classifier batch must be an even number >= 2, got {batch}")
        self.size, self.batch, self.seed = size, batch, seed
        self.first_step, self.last_step = first_step, last_step

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.first_step, self.last_step):
            generator = _step_generator(self.seed, step)
            indices = torch.randint(self.size, (self.batch // 2,), generator=generator).tolist()
            seeds = torch.randint(2**31 - 1, (self.batch // 2,), generator=generator).tolist()
            yield list(zip(indices, seeds, strict=True))


def classifier_loss(
    model: NoiseAwareClassifier,
    schedule: DiffusionSchedule,
    x0: Tensor,
    labels: Tensor,
    t: Tensor,
    noise: Tensor,
    bf16: bool = True,
    masks: Tensor | None = None,
    dense_weight: float = DENSE_WEIGHT,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of healthy vs lesion on ``x_t``; returns (loss, image logits), float32.

    With ``masks`` ``(B, h, w)`` the evidence map is also supervised (weight ``dense_weight``):
    each evidence cell's target is whether it covers any lesion pixel, see
    :func:`dense_evidence_loss`.
    """
    x_t = schedule.q_sample(x0, t, noise).contiguous(memory_format=torch.channels_last)
    with bf16_autocast(x0.device, bf16):
        evidence = model.evidence(x_t, t)
    evidence = evidence.float()
    logits = model.pool(evidence)
    loss = F.binary_cross_entropy_with_logits(logits, labels.float())
    if masks is not None and dense_weight > 0:
        loss = loss + dense_weight * dense_evidence_loss(evidence, masks)
    return loss, logits


def dense_evidence_loss(evidence: Tensor, masks: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy of the evidence map ``(B, 1, h, w)`` against masks.

    A cell's target is 1 when it covers any lesion pixel of ``masks`` ``(B, H, W)``. Lesion cells
    are about 1% of all cells, so a plain mean is satisfied by calling every cell healthy and
    the few lesion cells get almost no gradient (the first classifier runs stayed near chance,
    even on their own training crops); the mean over lesion cells and the mean over healthy
    cells are therefore weighted equally. Without any lesion cell in the batch only the
    healthy term remains.
    """
    cells = F.adaptive_max_pool2d(masks[:, None].float(), evidence.shape[-2:])
    per_cell = F.binary_cross_entropy_with_logits(evidence, cells, reduction="none")
    positive = cells.sum()
    negative = cells.numel() - positive
    healthy_term = (per_cell * (1 - cells)).sum() / negative.clamp_min(1)
    lesion_term = (per_cell * cells).sum() / positive.clamp_min(1)
    return healthy_term + lesion_term


def paired_noise(
    batch: int,
    shape: Sequence[int],
    num_timesteps: int,
    generator: torch.Generator,
    low_noise_bias: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Timesteps ``(B,)`` and noise ``(B, *shape)``, equal within each (healthy, lesion) pair.

    ``t = floor(T u^bias)`` with ``u`` uniform: every level is drawn, low-noise levels (where a
    lesion is visible at all, and where guidance acts) more often; ``bias = 1`` is uniform.
    """
    u = torch.rand(batch // 2, generator=generator, dtype=torch.float64)
    t = (u.pow(low_noise_bias) * num_timesteps).long().clamp_max(num_timesteps - 1)
    t = t.repeat_interleave(2)
    noise = torch.randn((batch // 2, *shape), generator=generator).repeat_interleave(2, dim=0)
    return t, noise


class _ClassifierRun(TrainState):
    """The classifier's run: a :class:`NoiseAwareClassifier`, its EMA copy and the crop size."""

    def __init__(
        self,
        config: ClassifierConfig,
        settings: TrainSettings,
        device: torch.device,
        crop: int | None,
    ) -> None:
        torch.manual_seed(settings.seed)
        self.config = config
        self.crop = crop
        super().__init__(
            classifier_to_device(NoiseAwareClassifier(config), device),
            classifier_to_device(NoiseAwareClassifier(config), device),
            settings,
        )

    @property
    def classifier(self) -> NoiseAwareClassifier:
        """The trained (non-EMA) network, typed."""
        assert isinstance(self.model, NoiseAwareClassifier)
        return self.model

    def checkpoint_extra(self, schedule: DiffusionSchedule) -> dict[str, Any]:
        """What a classifier checkpoint holds beyond :meth:`TrainState.save`'s fields."""
        return {
            "kind": "classifier",
            "classifier_config": self.config.to_dict(),
            "crop": self.crop if self.crop is not None else 0,
            "schedule": schedule.to_dict(),
        }


def read_classifier_checkpoint(path: Path) -> dict[str, Any]:
    """Load a classifier training checkpoint on the CPU."""
    return load_checkpoint(path, ("classifier_config", "ema"), "classifier")


def iter_train_classifier(
    healthy: Dataset[Tensor],
    run_dir: str | Path,
    settings: TrainSettings,
    config: ClassifierConfig | None = None,
    resume: bool = True,
    threads: int | None = None,
    device: str | torch.device | None = None,
    crop: int | None = DEFAULT_CROP,
    dense_weight: float = DENSE_WEIGHT,
    training_data: dict[str, Any] | None = None,
    init_from: str | Path | None = None,
    appearance: float = 0.0,
    tissue_blobs: float = 0.0,
) -> Iterator[StepLog]:
    """Train until ``settings.steps`` total steps, yielding a :class:`StepLog` per step.

    ``healthy`` yields float32 ``(2, H, W)`` lesion-free slices (a slice bank); ``crop`` is the
    training window (``None``: whole slices). With ``resume`` the latest checkpoint in
    ``run_dir`` continues (its architecture wins; a conflicting ``config`` is an error); the crop
    may change on resume, so a run can start on cheap crops around the lesions and finish on
    whole slices (what the anomaly maps feed it; each checkpoint records the crop it used);
    without ``resume`` a run folder holding checkpoints is refused. Checkpoints also record
    ``dense_weight`` and ``training_data`` (what the dataset is, e.g.
    :meth:`BankSelection.to_dict`), which may change on resume too. ``init_from`` starts a new
    run from exported classifier weights (their architecture, a fresh optimiser, step 0; see
    :mod:`services.recon.init_weights`), e.g. to fine-tune the shipped classifier on a new bank.
    ``appearance`` and ``tissue_blobs`` are :class:`LesionPairs`' probabilities of a random
    scanner appearance and of healthy look-alike blobs (recorded; they may change on resume).
    """
    run = start_run(run_dir, settings, resume, threads, device, read_classifier_checkpoint)
    init = load_classifier(init_from, device="cpu") if init_from is not None else None
    record: dict[str, Any] | None = init_record(init) if init is not None else None
    schedule = DiffusionSchedule.cosine()
    if run.payload is not None:
        if init is not None:
            check_resumed_init(run.payload, init, run.path)
        saved = ClassifierConfig.from_dict(run.payload["classifier_config"])
        config = resumed_config(config, saved, "classifier config", run.path)
        record = run.payload.get(INIT_KEY)
    elif init is not None:
        config = _initial_config(init, config, schedule)
    state = _ClassifierRun(config or DEFAULT_CONFIG, settings, run.device, crop)
    if run.payload is not None:
        state.load(run.payload, settings.lr)
    elif init is not None:
        start_from(init, state.model, state.ema_model)
    pairs = LesionPairs(healthy, crop=crop, appearance=appearance, tissue_blobs=tissue_blobs)
    if len(pairs) == 0:
        raise InputError("training set is empty")

    def batches() -> DataLoader[LabelledPair]:
        sampler = PairedStepSampler(
            len(pairs), settings.batch, settings.seed, state.step, settings.steps
        )
        return DataLoader(
            pairs, batch_sampler=sampler, num_workers=settings.workers, persistent_workers=False
        )

    def loss_of(batch: LabelledPair) -> tuple[Tensor, tuple[str, ...]]:
        pairs_batch, pair_labels, pair_masks = batch
        images = pairs_batch.flatten(0, 1)
        labels = pair_labels.flatten()
        masks = pair_masks.flatten(0, 1)
        generator = _step_generator(settings.seed + 1, state.step)
        t, noise = paired_noise(len(labels), images.shape[1:], schedule.num_timesteps, generator)
        images, labels, masks = images.to(run.device), labels.to(run.device), masks.to(run.device)
        loss, logits = classifier_loss(
            state.classifier,
            schedule,
            images,
            labels,
            t.to(run.device),
            noise.to(run.device),
            settings.bf16,
            masks=masks,
            dense_weight=dense_weight,
        )
        accuracy = float(((logits.detach() > 0).long() == labels).float().mean())
        return loss, (f"{accuracy:.3f}",)

    extra = {
        **state.checkpoint_extra(schedule),
        "dense_weight": dense_weight,
        APPEARANCE_KEY: appearance,
        TISSUE_BLOBS_KEY: tissue_blobs,
    }
    if training_data is not None:
        extra[TRAINING_DATA_KEY] = training_data
    if record is not None:
        extra[INIT_KEY] = record
    yield from iter_steps(state, run.path, settings, extra, ("accuracy",), batches, loss_of)


def _initial_config(
    init: LoadedClassifier, config: ClassifierConfig | None, schedule: DiffusionSchedule
) -> ClassifierConfig:
    """The architecture of the weights a new run starts from, checked against the run's."""
    if config is not None and config != init.config:
        raise InputError(f"classifier config differs from the architecture of {init.path.name}")
    if init.schedule.to_dict() != schedule.to_dict():
        raise InputError(f"{init.path.name} was trained with another noise schedule")
    return init.config


def train_classifier(
    bank: str | Path | Dataset[Tensor],
    run_dir: str | Path,
    steps: int,
    batch: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    ema: float = 0.999,
    seed: int = 0,
    resume: bool = True,
    threads: int | None = 1,
    checkpoint_every: int = 200,
    workers: int = 0,
    bf16: bool = True,
    device: str | torch.device | None = None,
    config: ClassifierConfig | None = None,
    crop: int | None = DEFAULT_CROP,
    on_step: Callable[[StepLog], None] | None = None,
    dense_weight: float = DENSE_WEIGHT,
    selection: BankSelection | None = None,
    init_from: str | Path | None = None,
    appearance: float = 0.0,
    tissue_blobs: float = 0.0,
) -> TrainResult:
    """Train (or continue) the classifier in ``run_dir`` up to ``steps`` total steps.

    ``bank`` is a slice-bank folder (:class:`services.recon.data.bank.SliceBank`) or any Dataset
    of float32 ``(2, H, W)`` healthy slices; ``crop`` is the training window around each lesion
    (``None``: whole slices; the network is fully convolutional and maps whole slices later).
    ``dense_weight`` weighs the evidence-map loss against the slice loss; ``selection`` picks
    and augments the bank's slices as for the prior; ``init_from`` starts a new run from
    exported classifier weights; ``appearance`` and ``tissue_blobs`` are how often a pair gets a
    random scanner appearance and healthy look-alike blobs. Defaults to one torch thread: the
    prior trains on the same cores.
    """
    dataset, training_data = training_slices(bank, selection)
    settings = TrainSettings(
        steps=steps,
        batch=batch,
        lr=lr,
        ema=ema,
        seed=seed,
        weight_decay=weight_decay,
        checkpoint_every=checkpoint_every,
        workers=workers,
        bf16=bf16,
    )
    entries = iter_train_classifier(
        dataset,
        run_dir,
        settings,
        config,
        resume,
        threads,
        device,
        crop,
        dense_weight,
        training_data,
        init_from,
        appearance,
        tissue_blobs,
    )
    return drain_run(entries, run_dir, read_classifier_checkpoint, on_step)


def export_classifier(
    run_dir: str | Path, out_path: str | Path = DEFAULT_WEIGHTS, name: str | None = None
) -> ExportedWeights:
    """Write the EMA weights of a run's latest checkpoint (format of ``load_classifier``)."""
    payload = latest_payload(run_dir, read_classifier_checkpoint)
    step = int(payload["step"])
    weights = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "name": name or f"mrdiff-classifier-step{step}",
        "classifier_config": payload["classifier_config"],
        "schedule": payload["schedule"],
        "input": INPUT_CONVENTION,
        "state_dict": {key: value.float() for key, value in payload["ema"].items()},
        "step": step,
        "lesion_family": TRAINING_FAMILY.name,
        "research_use_only": RESEARCH_USE_ONLY,
    }
    for key in ("dense_weight", TRAINING_DATA_KEY, INIT_KEY, APPEARANCE_KEY, TISSUE_BLOBS_KEY):
        if key in payload:
            weights[key] = payload[key]
    return write_weights(weights, out_path)


class NoiseLevelAccuracy(NamedTuple):
    """Classifier quality at one timestep on a labelled set.

    ``localisation_auroc``: pixel AUROC inside the head of the evidence map (upsampled to the
    slice) against the lesion masks, pooled over the lesion slices: where, not whether.
    """

    timestep: int
    accuracy: float
    auroc: float
    localisation_auroc: float
    images: int


class LabelledSet(NamedTuple):
    """Classifier inputs ``(N, 2, H, W)``, labels (1: lesion), lesion masks and heads (N, H, W)."""

    images: Tensor
    labels: Tensor
    lesion_masks: np.ndarray
    heads: np.ndarray


def labelled_set(magnitudes: Sequence[np.ndarray], family: LesionFamily, seed: int) -> LabelledSet:
    """Each slice healthy and with one lesion (seed ``seed + i``), as classifier inputs."""
    images: list[Tensor] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    for i, magnitude in enumerate(magnitudes):
        try:
            lesioned = insert_lesion(magnitude, seed + i, family)
        except InputError:
            continue
        head = foreground_mask(lesioned.image)
        pair = ((magnitude, 0, np.zeros_like(head)), (lesioned.image, 1, lesioned.lesion_mask))
        for image, label, mask in pair:
            x0, _ = prior_input_from_magnitude(torch.from_numpy(np.array(image, np.float32))[None])
            images.append(x0[0])
            labels.append(label)
            masks.append(np.asarray(mask, bool))
            heads.append(head)
    if not images:
        raise InputError("no slice could hold a lesion")
    return LabelledSet(torch.stack(images), torch.tensor(labels), np.stack(masks), np.stack(heads))


@torch.no_grad()
def accuracy_by_noise_level(
    model: NoiseAwareClassifier,
    schedule: DiffusionSchedule,
    labelled: LabelledSet,
    timesteps: Sequence[int] = ACCURACY_TIMESTEPS,
    seed: int = 0,
    batch: int = 16,
    bf16: bool = True,
) -> list[NoiseLevelAccuracy]:
    """Accuracy (threshold 0) and AUROC of the lesion logit on the set noised to each ``t``,
    and the localisation AUROC of its evidence map (:class:`NoiseLevelAccuracy`)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    images, labels = labelled.images, labelled.labels
    lesion = labels.numpy() == 1
    rows = []
    for t in timesteps:
        logits, evidence = [], []
        for start in range(0, len(images), batch):
            x0 = images[start : start + batch].to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
            x_t = schedule.q_sample(x0, tt, noise).contiguous(memory_format=torch.channels_last)
            with bf16_autocast(device, bf16):
                cells = model.evidence(x_t, tt).float()
            logits.append(model.pool(cells).cpu())
            upsampled = F.interpolate(cells, size=x0.shape[-2:], mode="bilinear")
            evidence.append(upsampled[:, 0].cpu())
        scores = torch.cat(logits)
        accuracy = float(((scores > 0).long() == labels).float().mean())
        pixels = torch.cat(evidence).numpy()[lesion]
        heads, masks = labelled.heads[lesion], labelled.lesion_masks[lesion]
        localisation = auroc(pixels[heads], masks[heads]) if masks.any() else float("nan")
        slice_auroc = auroc(scores.numpy(), labels.numpy())
        rows.append(NoiseLevelAccuracy(t, accuracy, slice_auroc, localisation, len(labels)))
    return rows


def classifier_card_section(
    classifier: NoiseAwareClassifier,
    schedule: DiffusionSchedule,
    splits: dict[str, LabelledSet],
    title: str,
    details: Sequence[str] = (),
    timesteps: Sequence[int] = ACCURACY_TIMESTEPS,
) -> str:
    """MODEL_CARD.md section: accuracy, AUROC and localisation by noise level on each set."""
    results = {
        name: accuracy_by_noise_level(classifier, schedule, labelled, timesteps)
        for name, labelled in splits.items()
    }
    names = list(results)
    columns = " | ".join(f"{n} acc | {n} AUROC | {n} localisation" for n in names)
    header = f"| t | abar_t | {columns} |"
    lines = [
        f"## {title}",
        "",
        *details,
        "",
        "Accuracy (threshold 0 on the lesion logit) and AUROC of healthy vs lesion on each set's",
        "slices noised to timestep t (one noise draw per slice; pairs: each slice healthy and with",
        "one lesion); localisation: pixel AUROC inside the head of the evidence map (upsampled",
        "to the slice) against the lesion masks, over the lesion slices. Research use only, not",
        "for diagnosis.",
        "",
        header,
        "|" + "---|" * (2 + 3 * len(names)),
    ]
    for row_index, t in enumerate(timesteps):
        abar = float(schedule.alpha_bars[t])
        cells = []
        for name in names:
            row = results[name][row_index]
            cells += [f"{row.accuracy:.3f}", f"{row.auroc:.3f}", f"{row.localisation_auroc:.3f}"]
        lines.append(f"| {t} | {abar:.3f} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{n}: {results[n][0].images} images" for n in names)
    lines += ["", f"Sets: {counts}."]
    return "\n".join(lines) + "\n"
