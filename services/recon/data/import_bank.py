"""Bring your own data: a slice bank made from a site's fully sampled scans.

Inputs are read by mrdiff's own readers (:func:`services.recon.io.read_input`: fastMRI or
ISMRMRD k-space, NIfTI, DICOM series), put on the bank's grid by
:mod:`services.recon.data.scan_slices`, and written in the layout, dtype and normalisation of
:mod:`services.recon.data.bank` (shards, ``slices.csv``, ``manifest.json``), so
:class:`~services.recon.data.bank.SliceBank` and ``mrdiff train prior --bank`` read it
unchanged. Magnitude-only slices get the synthetic bank's smooth random phase, slice ``i`` from
``numpy.random.default_rng([seed, i])``. Slices that are (nearly) background only are skipped.

Privacy: the manifest identifies each input by the SHA-256 of its content and counts its
slices; it never holds a file name or any header field (patient name, ID, dates, UIDs).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from services.recon.data.bank import (
    DATA_CODE_FILES,
    SHARD_DTYPE,
    SLICES_NAME,
    as_channels,
    code_version,
    manifest_header,
    shard_entry,
    slice_generator,
    staged_bank,
    write_manifest,
    write_shard,
    write_slices_csv,
)
from services.recon.data.scan_slices import (
    FOREGROUND_FRACTION_OF_P99,
    ScanSlices,
    foreground_fraction,
    scan_slices,
)
from services.recon.data.synthesis import MIN_HEAD_FRACTION, with_smooth_phase
from services.recon.errors import InputError
from services.recon.io.nifti import is_nifti_name
from services.recon.io.sniff import read_input
from services.recon.io.volumes import ImageVolume, KspaceVolume
from services.recon.prior import sha256_of

IMPORT_KIND = "imported fully sampled scans"
IMPORT_CODE_FILES = (*DATA_CODE_FILES, "import_bank.py", "scan_slices.py")
IMPORT_SLICE_FIELDS = ("index", "shard", "source", "source_slice", "phase")
SKIP_RULE = (
    f"a slice is skipped when under {MIN_HEAD_FRACTION:.0%} of its {{size}}x{{size}} field of "
    f"view is above {FOREGROUND_FRACTION_OF_P99:.0%} of its volume's 99th-percentile magnitude "
    "(background only)"
)
SYNTHETIC_PHASE = (
    "synthetic: slice i gets services.recon.data.synthesis.with_smooth_phase with "
    "numpy.random.default_rng([seed, i]), as the synthetic bank"
)


class ImportSummary(NamedTuple):
    """What :func:`import_bank` wrote."""

    directory: Path
    n: int
    shards: int
    skipped: int
    sources: int
    seconds: float


Progress = Callable[[int, int, dict[str, Any]], None]
"""``progress(number, total, source_record)`` after each input (records hold no file names)."""


def source_sha256(path: Path) -> tuple[str, str]:
    """SHA-256 identifying an input, and what it was computed over.

    A file: its bytes. A folder (DICOM series): the sorted SHA-256s of the files in it, so
    neither file names nor their order enter the digest.
    """
    if not path.is_dir():
        return sha256_of(path), "file content"
    files = sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and not any(p.startswith(".") for p in file.relative_to(path).parts)
    )
    digests = sorted(sha256_of(file) for file in files)
    combined = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return combined, f"sorted SHA-256s of the {len(files)} files in a folder"


def input_format(path: Path) -> str:
    """The kind of input, as the manifest states it."""
    if path.is_dir():
        return "DICOM series (folder)"
    if is_nifti_name(path):
        return "NIfTI"
    if h5py.is_hdf5(path):
        return "k-space HDF5 (fastMRI or ISMRMRD)"
    return "DICOM"


def read_scan(path: Path, label: str) -> KspaceVolume | ImageVolume:
    """Read a fully sampled scan; mrdiff's own reconstructions (model outputs) are refused."""
    volume = read_input(path)
    if isinstance(volume, ImageVolume) and path.is_file() and h5py.is_hdf5(path):
        raise InputError(
            f"{label}: a reconstruction HDF5 holds model outputs, not a fully sampled scan; "
            "give k-space HDF5, NIfTI or DICOM"
        )
    return volume


class ShardWriter:
    """Bank slices (2, H, W) collected into shards of ``shard_size`` (:func:`write_shard`)."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.directory, self.shard_size = directory, shard_size
        self.pending: list[np.ndarray] = []
        self.entries: list[dict[str, Any]] = []
        self.count = 0

    @property
    def current_shard(self) -> str:
        return f"shard_{len(self.entries):05d}.npy"

    def add(self, channels: np.ndarray) -> None:
        self.pending.append(channels)
        self.count += 1
        if len(self.pending) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending slices as the next shard (nothing when none are pending)."""
        if not self.pending:
            return
        path = self.directory / self.current_shard
        write_shard(path, np.stack(self.pending).astype(SHARD_DTYPE))
        self.entries.append(shard_entry(path, self.count - len(self.pending), len(self.pending)))
        self.pending = []


def bank_image(scan: ScanSlices, index_in_scan: int, rng: np.random.Generator) -> np.ndarray:
    """One complex slice (measured phase, or the synthetic smooth phase) scaled to unit p99."""
    image = scan.images[index_in_scan]
    if not scan.measured_phase:
        image = with_smooth_phase(image, rng)
    scale = float(np.percentile(np.abs(image), 99))
    return np.asarray(image / max(scale, 1e-8), dtype=np.complex64)


def _check_arguments(inputs: Sequence[Path], size: int, pixel_mm: float, shard_size: int) -> None:
    if not inputs:
        raise InputError("no inputs given")
    if size < 8 or not 0.25 <= pixel_mm <= 8.0 or shard_size < 1:
        raise InputError(
            f"need matrix >= 8, 0.25 <= pixel_mm <= 8 and shard_size >= 1; "
            f"got {size}, {pixel_mm}, {shard_size}"
        )


def _hash_inputs(inputs: Sequence[Path]) -> list[tuple[str, str]]:
    """Each input's (sha256, what was hashed); the same content given twice is refused."""
    hashes: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, path in enumerate(inputs, start=1):
        if not path.exists():
            raise InputError(f"input {number}: {path.name}: no such file or directory")
        digest, hashed = source_sha256(path)
        if digest in seen:
            raise InputError(f"inputs {seen[digest]} and {number} have the same content")
        seen[digest] = number
        hashes.append((digest, hashed))
    return hashes


def import_bank(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    size: int = 128,
    seed: int = 0,
    *,
    pixel_mm: float = 2.0,
    shard_size: int = 1000,
    progress: Progress | None = None,
) -> ImportSummary:
    """Write the slices of fully sampled scans ``inputs`` as a slice bank in ``out_dir``.

    Refuses (:class:`InputError`) an ``out_dir`` that holds files, inputs it cannot read,
    undersampled k-space, the same input twice, and inputs without a single usable slice. The
    bank is built in a hidden sibling folder and renamed into place: a failure leaves nothing.
    """
    paths = [Path(path) for path in inputs]
    out = Path(out_dir)
    _check_arguments(paths, size, pixel_mm, shard_size)
    hashes = _hash_inputs(paths)
    version = code_version(IMPORT_CODE_FILES)
    started = time.perf_counter()
    with staged_bank(out) as staging:
        writer = ShardWriter(staging, shard_size)
        rows: list[dict[str, Any]] = []
        sources: list[dict[str, Any]] = []
        for number, (path, (digest, hashed)) in enumerate(zip(paths, hashes, strict=True), 1):
            label = f"input {number}"
            scan = scan_slices(read_scan(path, label), size, pixel_mm, label)
            kept = 0
            for index_in_scan, image in enumerate(scan.images):
                if foreground_fraction(image, scan.foreground_level) < MIN_HEAD_FRACTION:
                    continue
                rng = slice_generator(seed, writer.count)
                rows.append(
                    {
                        "index": writer.count,
                        "shard": writer.current_shard,
                        "source": number - 1,
                        "source_slice": index_in_scan,
                        "phase": "measured" if scan.measured_phase else "synthetic",
                    }
                )
                writer.add(as_channels(bank_image(scan, index_in_scan, rng)))
                kept += 1
            sources.append(_source_record(path, digest, hashed, scan, kept))
            if progress is not None:
                progress(number, len(paths), sources[-1])
        if writer.count == 0:
            raise InputError(
                "no slice of the inputs has content above the background; nothing to import"
            )
        writer.flush()
        seconds = time.perf_counter() - started
        write_slices_csv(staging / SLICES_NAME, rows, IMPORT_SLICE_FIELDS)
        manifest = _manifest(writer, sources, seed, size, pixel_mm, seconds, version)
        write_manifest(staging, manifest)
    skipped = sum(int(source["slices_skipped"]) for source in sources)
    return ImportSummary(out, writer.count, len(writer.entries), skipped, len(paths), seconds)


def _source_record(
    path: Path, digest: str, hashed: str, scan: ScanSlices, kept: int
) -> dict[str, Any]:
    """The manifest entry of one input: content hash and counts, never its name or headers."""
    total = len(scan.images)
    return {
        "sha256": digest,
        "sha256_of": hashed,
        "format": input_format(path),
        "content": scan.content,
        "slices": total,
        "slices_kept": kept,
        "slices_skipped": total - kept,
        "pixel_mm_in": list(scan.pixel_mm_in) if scan.pixel_mm_in else None,
        "geometry": scan.geometry,
        "phase": "measured" if scan.measured_phase else SYNTHETIC_PHASE,
    }


def _manifest(
    writer: ShardWriter,
    sources: list[dict[str, Any]],
    seed: int,
    size: int,
    pixel_mm: float,
    seconds: float,
    version: dict[str, str],
) -> dict[str, Any]:
    return {
        **manifest_header(writer.count, seed, size),
        "kind": IMPORT_KIND,
        "seeding": "magnitude-only slice i: phase from numpy.random.default_rng([seed, i])",
        "pixel_mm": pixel_mm,
        "skip_rule": SKIP_RULE.format(size=size),
        "slices_skipped": sum(int(source["slices_skipped"]) for source in sources),
        "shards": writer.entries,
        "sources": sources,
        "privacy": "inputs are identified by content SHA-256 only: no file names, no headers",
        "code_version": version,
        "build": {"seconds": round(seconds, 2)},
    }
