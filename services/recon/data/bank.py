"""A bank of synthetic complex head slices on disk, and the torch Dataset that reads it.

Layout of a bank directory::

    manifest.json        format, seed, counts, sources with licences, code version, timings
    slices.csv           one row per slice: index, shard, recipe, orientation, contrast, ...
    shard_00000.npy      float16 (N, 2, H, W): real and imaginary parts
    ...

Slice ``i`` of a bank built with ``seed`` is ``synthesize_head_slice`` of
``numpy.random.default_rng([seed, i])`` at a pixel size drawn from the same generator, so a bank
does not depend on how many workers built it. The bank is built in a hidden sibling folder and
renamed into place at the end: a failed build leaves nothing behind. The writers here
(:func:`staged_bank`, :func:`write_shard`, :func:`write_manifest`, ...) also write banks of a
site's own scans (:mod:`services.recon.data.import_bank`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from services.recon.data.splits import SOURCE_TABLE, TRAINING_SOURCES
from services.recon.data.synthesis import (
    RECIPES,
    SliceVariations,
    synthesize_head_slice_with_info,
)
from services.recon.errors import InputError

BANK_FORMAT = "mrdiff-slice-bank/1"
MANIFEST_NAME = "manifest.json"
SLICES_NAME = "slices.csv"
RESEARCH_NOTICE = "research use only, not for diagnosis"
SHARD_DTYPE = np.float16
NORMALISATION = "per slice, 99th percentile of the magnitude is 1"
DEFAULT_PIXEL_MM: tuple[float, ...] = (2.0, 1.0)
Geometry = Literal["dihedral", "mirror"]
"""Geometric augmentation: all 8 flips and quarter turns, or only the left-right mirror image
(keeps the display orientation the bank was written in: nose up, as scans are viewed)."""
GEOMETRIES: tuple[str, ...] = get_args(Geometry)
DEFAULT_PIXEL_MM_WEIGHTS: tuple[float, ...] = (0.6, 0.4)
DATA_CODE_FILES = (
    "bank.py",
    "contrast.py",
    "fields.py",
    "folds.py",
    "atrophy.py",
    "sampling.py",
    "splits.py",
    "synthesis.py",
    "templates.py",
)
"""The modules whose code decides what a bank contains (hashed into the manifest)."""
SLICE_FIELDS = (
    "index",
    "shard",
    "recipe",
    "sources",
    "orientation",
    "contrast",
    "pixel_mm",
    "snr",
    "folded",
    "atrophic",
)


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Slices ``first_index`` .. ``first_index + count - 1`` of a bank, written to ``path``."""

    path: Path
    first_index: int
    count: int
    seed: int
    size: int
    pixel_mm_choices: tuple[float, ...]
    pixel_mm_weights: tuple[float, ...]
    variations: SliceVariations = dataclasses.field(default_factory=SliceVariations)


@dataclasses.dataclass(frozen=True)
class BankSummary:
    """What :func:`build_bank` made."""

    directory: Path
    n: int
    shards: int
    seconds: float
    slices_per_second: float


def slice_generator(seed: int, index: int) -> np.random.Generator:
    """The generator behind slice ``index`` of a bank built with ``seed``."""
    return np.random.default_rng([seed, index])


def _build_shard(task: ShardTask) -> list[dict[str, Any]]:
    """Synthesize one shard and write it atomically; return one metadata row per slice."""
    weights = np.asarray(task.pixel_mm_weights) / np.sum(task.pixel_mm_weights)
    images = np.empty((task.count, 2, task.size, task.size), dtype=SHARD_DTYPE)
    rows: list[dict[str, Any]] = []
    for offset in range(task.count):
        index = task.first_index + offset
        rng = slice_generator(task.seed, index)
        pixel_mm = task.pixel_mm_choices[int(rng.choice(len(weights), p=weights))]
        made = synthesize_head_slice_with_info(rng, task.size, pixel_mm, task.variations)
        images[offset] = as_channels(made.image)
        rows.append(
            {
                "index": index,
                "shard": task.path.name,
                "recipe": made.recipe,
                "sources": "+".join(made.sources),
                "orientation": made.orientation,
                "contrast": made.contrast,
                "pixel_mm": made.pixel_mm,
                "snr": round(made.snr, 2),
                "folded": int(made.folded),
                "atrophic": int(made.atrophic),
            }
        )
    write_shard(task.path, images)
    return rows


def as_channels(image: np.ndarray) -> np.ndarray:
    """A complex (H, W) slice as the bank stores it: (2, H, W) real and imaginary, float16."""
    return np.stack([image.real, image.imag]).astype(SHARD_DTYPE)


def write_shard(path: Path, images: np.ndarray) -> None:
    """Write a shard (N, 2, H, W) atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, images)
    os.replace(temporary, path)


def shard_entry(path: Path, first_index: int, count: int) -> dict[str, Any]:
    """The manifest's record of a written shard (its name, slice range and SHA-256)."""
    return {"file": path.name, "first_index": first_index, "count": count, "sha256": _sha256(path)}


def _limit_threads() -> None:
    """Worker initializer: one torch thread per worker process."""
    torch.set_num_threads(1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _run_tasks(tasks: list[ShardTask], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Run shard tasks inline (one worker) or in a spawn pool of single-threaded processes."""
    if workers <= 1:
        for task in tasks:
            yield _build_shard(task)
        return
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))  # inherited by spawned workers
    try:
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(processes=workers, initializer=_limit_threads)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    with pool:
        yield from pool.imap_unordered(_build_shard, tasks)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version(files: tuple[str, ...] = DATA_CODE_FILES) -> dict[str, str]:
    """Package version plus a hash of the source ``files`` (in this folder) that made the bank."""
    try:
        version = metadata.version("mrdiff")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent / name for name in files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return {"package_version": version, "data_code_sha256": digest.hexdigest()}


def build_bank(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 128,
    *,
    workers: int = 2,
    shard_size: int = 1000,
    pixel_mm_choices: tuple[float, ...] = DEFAULT_PIXEL_MM,
    pixel_mm_weights: tuple[float, ...] = DEFAULT_PIXEL_MM_WEIGHTS,
    variations: SliceVariations | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BankSummary:
    """Synthesize ``n`` slices into ``out_dir`` (shards + slices.csv + manifest.json).

    ``workers`` processes (1-2 on these machines) build shards of ``shard_size`` slices; the
    result is identical for any number of workers. ``progress(done, n)`` is called per shard.
    ``variations``: how often a slice gets each optional variation (none by default).
    """
    out = Path(out_dir)
    if n < 1 or size < 8 or shard_size < 1 or workers < 1:
        raise InputError(f"need n >= 1, size >= 8, shard_size >= 1, workers >= 1; got {n}, {size}")
    if len(pixel_mm_choices) != len(pixel_mm_weights) or min(pixel_mm_weights) < 0:
        raise InputError("pixel_mm_choices and pixel_mm_weights must pair up, weights >= 0")
    version = code_version()  # of the code that makes the slices, read before it runs
    with staged_bank(out, overwrite) as staging:
        started = time.perf_counter()
        tasks = [
            ShardTask(
                path=staging / f"shard_{k:05d}.npy",
                first_index=first,
                count=min(shard_size, n - first),
                seed=seed,
                size=size,
                pixel_mm_choices=tuple(float(p) for p in pixel_mm_choices),
                pixel_mm_weights=tuple(float(w) for w in pixel_mm_weights),
                variations=variations or SliceVariations(),
            )
            for k, first in enumerate(range(0, n, shard_size))
        ]
        rows: list[dict[str, Any]] = []
        for shard_rows in _run_tasks(tasks, workers):
            rows.extend(shard_rows)
            if progress is not None:
                progress(len(rows), n)
        seconds = time.perf_counter() - started
        rows.sort(key=lambda row: int(row["index"]))
        write_slices_csv(staging / SLICES_NAME, rows)
        write_manifest(staging, _manifest(tasks, rows, seed, size, workers, seconds, version))
    return BankSummary(
        directory=out, n=n, shards=len(tasks), seconds=seconds, slices_per_second=n / seconds
    )


@contextlib.contextmanager
def staged_bank(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden sibling folder to build the bank ``out`` in, renamed into place when the block
    ends without error and removed when it fails: a failed build leaves nothing behind.

    An existing ``out`` that holds files is refused (:class:`InputError`) unless ``overwrite``.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pass overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_slices_csv(
    path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...] = SLICE_FIELDS
) -> None:
    """One row per slice, in bank order, with the columns ``fields``."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` into ``directory``."""
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def manifest_header(n: int, seed: int, size: int) -> dict[str, Any]:
    """The manifest fields every bank has, whatever made its slices."""
    return {
        "format": BANK_FORMAT,
        "notice": RESEARCH_NOTICE,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": n,
        "seed": seed,
        "size": size,
        "dtype": np.dtype(SHARD_DTYPE).name,
        "layout": "(N, 2, H, W): real, imaginary",
        "normalisation": NORMALISATION,
    }


def _manifest(
    tasks: list[ShardTask],
    rows: list[dict[str, Any]],
    seed: int,
    size: int,
    workers: int,
    seconds: float,
    version: dict[str, str],
) -> dict[str, Any]:
    used_sources = sorted({source for row in rows for source in str(row["sources"]).split("+")})
    source_counts = Counter(s for row in rows for s in str(row["sources"]).split("+"))
    entries = {entry.source: entry for entry in SOURCE_TABLE}
    return {
        **manifest_header(len(rows), seed, size),
        "seeding": "slice i: numpy.random.default_rng([seed, i]) draws pixel size, then "
        "services.recon.data.synthesis.synthesize_head_slice_with_info(rng, size, pixel_mm, "
        "SliceVariations(fold_probability, atrophy_probability, dwi_probability))",
        **dataclasses.asdict(tasks[0].variations),
        "folded_count": sum(int(row["folded"]) for row in rows),
        "atrophic_count": sum(int(row["atrophic"]) for row in rows),
        "pixel_mm_choices": list(tasks[0].pixel_mm_choices),
        "pixel_mm_weights": list(tasks[0].pixel_mm_weights),
        "pixel_mm_counts": dict(Counter(str(row["pixel_mm"]) for row in rows)),
        "shards": [shard_entry(task.path, task.first_index, task.count) for task in tasks],
        "recipes": [recipe._asdict() for recipe in RECIPES],
        "recipe_counts": dict(Counter(str(row["recipe"]) for row in rows)),
        "orientation_counts": dict(Counter(str(row["orientation"]) for row in rows)),
        "contrast_counts": dict(Counter(str(row["contrast"]) for row in rows)),
        "sources": [
            {
                "source": name,
                "volume_id": entries[name].volume_id,
                "split": entries[name].split,
                "licence": entries[name].licence,
                "slices_using_it": source_counts[name],
            }
            for name in used_sources
        ],
        "training_split_sources": list(TRAINING_SOURCES),
        "code_version": version,
        "build": {
            "workers": workers,
            "seconds": round(seconds, 2),
            "slices_per_second": round(len(rows) / seconds, 1),
        },
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a bank; :class:`InputError` if ``directory`` holds no complete bank."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{directory} is not a slice bank (no {MANIFEST_NAME})")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != BANK_FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r}, expected {BANK_FORMAT!r}")
    return manifest


class SliceBank(Dataset[torch.Tensor]):
    """Slices of a bank as float32 tensors (2, H, W), real and imaginary parts.

    With ``augment`` each read is flipped and rotated (:data:`Geometry`), multiplied by a
    global phase e^{i theta} and scaled by a factor in [0.8, 1.25] (log-uniform). Random draws
    come from torch's generator (seeded per DataLoader worker) or, with ``seed``, from a
    generator seeded by (seed, index), which makes every read of an index the same.
    """

    def __init__(
        self,
        directory: str | Path,
        augment: bool = True,
        seed: int | None = None,
        geometry: Geometry = "dihedral",
    ):
        if geometry not in GEOMETRIES:
            raise InputError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.augment = augment
        self.seed = seed
        self.geometry = geometry
        self._files = [self.directory / shard["file"] for shard in self.manifest["shards"]]
        self._shards: list[np.ndarray] | None = None
        counts = [len(shard) for shard in self._open()]
        expected = [int(shard["count"]) for shard in self.manifest["shards"]]
        if counts != expected:
            raise InputError(f"{self.directory}: shard sizes {counts} differ from the manifest")
        self._starts = np.cumsum([0, *counts])

    def _open(self) -> list[np.ndarray]:
        """Memory-map the shards (lazily, once per process)."""
        if self._shards is None:
            self._shards = [np.load(path, mmap_mode="r") for path in self._files]
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn re-map the files instead of copying the arrays
        state = self.__dict__.copy()
        state["_shards"] = None
        return state

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"slice {index} outside a bank of {len(self)}")
        index %= len(self)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        array = np.asarray(self._open()[shard][index - self._starts[shard]], dtype=np.float32)
        image = torch.from_numpy(array)
        if not self.augment:
            return image
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return augment_complex_slice(image, generator, self.geometry)


def augment_complex_slice(
    image: torch.Tensor, generator: torch.Generator | None = None, geometry: Geometry = "dihedral"
) -> torch.Tensor:
    """Mirror left-right, and with ``dihedral`` also flip up-down and rotate by k * 90 degrees;
    then rotate the global phase and rescale a (2, H, W) image."""
    draws = torch.rand(5, generator=generator)
    if draws[0] < 0.5:
        image = torch.flip(image, dims=(2,))
    if geometry == "dihedral":
        if draws[1] < 0.5:
            image = torch.flip(image, dims=(1,))
        quarter_turns = int(draws[2] * 4) % 4
        if quarter_turns:
            image = torch.rot90(image, quarter_turns, dims=(1, 2))
    theta = float(draws[3]) * 2.0 * np.pi
    scale = float(np.exp(np.log(0.8) + float(draws[4]) * (np.log(1.25) - np.log(0.8))))
    cos, sin = scale * np.cos(theta), scale * np.sin(theta)
    real, imag = image[0], image[1]
    return torch.stack([cos * real - sin * imag, sin * real + cos * imag]).contiguous()


def indices_at_pixel_sizes(directory: str | Path, pixel_mm: tuple[float, ...]) -> list[int]:
    """Indices of the bank's slices whose pixel size (``slices.csv``) is one of ``pixel_mm``."""
    path = Path(directory) / SLICES_NAME
    if not path.is_file():
        raise InputError(f"{directory} has no {SLICES_NAME} to select pixel sizes from")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "pixel_mm" not in rows[0]:
        raise InputError(f"{path} records no pixel sizes (a bank of a site's scans?)")
    wanted = {round(float(size), 3) for size in pixel_mm}
    chosen = [int(row["index"]) for row in rows if round(float(row["pixel_mm"]), 3) in wanted]
    if not chosen:
        present = sorted({float(row["pixel_mm"]) for row in rows})
        raise InputError(f"no slice of {directory} at {sorted(wanted)} mm; it has {present} mm")
    return chosen
