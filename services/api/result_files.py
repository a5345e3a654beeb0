"""Published results of succeeded jobs, cached on local disk and read slice by slice.

Published results never change (publishing refuses to overwrite), so each artefact is downloaded
from object storage once into ``<data_dir>/api_cache/<tenant>/<job_id>/`` and served from there;
the cache is bounded (least recently used jobs go first) and a purge drops the job's folder.
Image volumes (``reconstruction``, ``variance``, ``anomaly_map``, ...) are read from the job's
HDF5 results with h5py, one slice at a time, so a PNG of one slice never loads the volume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from services.storage import Storage

IMAGE_DATASETS = ("reconstruction", "variance", "anomaly_map", "healthy", "anomaly_mask")
DEFAULT_CACHE_BYTES = 4 * 1024**3


class VolumeInfo(NamedTuple):
    """Shape, value range and default display window of one image dataset."""

    file: Path
    dataset: str
    shape: tuple[int, int, int]
    value_min: float
    value_max: float
    window: float
    level: float
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    slice_thickness_mm: float = 1.0


def default_window(values: np.ndarray) -> tuple[float, float]:
    """(width, centre) covering the 0.5-99.5th percentiles (from 0 for non-negative maps)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0, 0.5
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if low >= 0:  # magnitudes, variances and anomaly maps: show from zero
        low = 0.0
    if high <= low:
        high = low + (abs(low) or 1.0)
    return high - low, (high + low) / 2


class ResultCache:
    """Local copies of published artefacts, with per-file locks and an LRU size bound."""

    def __init__(
        self, storage: Storage, cache_dir: Path, max_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}
        self._volumes: dict[tuple[Path, str], VolumeInfo] = {}

    def job_dir(self, tenant: str, job_id: str) -> Path:
        return self.cache_dir / tenant / job_id

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            yield

    def artefact(self, tenant: str, job_id: str, artefact: str) -> Path:
        """Local path of a published artefact, downloading it the first time."""
        path = self.job_dir(tenant, job_id) / artefact
        with self._locked(path):
            if not path.is_file():
                self.storage.download_result(tenant, job_id, artefact, path)
                self._evict(keep=self.job_dir(tenant, job_id))
        with contextlib.suppress(OSError):
            os.utime(self.job_dir(tenant, job_id))
        return path

    def volumes(self, tenant: str, job_id: str, artefacts: Sequence[str]) -> dict[str, VolumeInfo]:
        """Image datasets found in the job's HDF5 artefacts (first file wins per name)."""
        found: dict[str, VolumeInfo] = {}
        for artefact in sorted(name for name in artefacts if name.endswith(".h5")):
            path = self.artefact(tenant, job_id, artefact)
            for dataset in IMAGE_DATASETS:
                if dataset not in found:
                    info = self._volume_info(path, dataset)
                    if info is not None:
                        found[dataset] = info
        return found

    def _volume_info(self, path: Path, dataset: str) -> VolumeInfo | None:
        cached = self._volumes.get((path, dataset))
        if cached is not None:
            return cached
        with h5py.File(path, "r") as h5:
            item = h5.get(dataset)
            usable = isinstance(item, h5py.Dataset) and item.ndim == 3
            if not usable or item.dtype.kind not in "biuf":
                return None
            values = np.asarray(item[()], dtype=np.float32)
            spacing = _floats(h5.attrs.get("pixel_spacing_mm"), 2) or (1.0, 1.0)
            thickness = (_floats(h5.attrs.get("slice_thickness_mm"), 1) or (spacing[0],))[0]
        window, level = default_window(values)
        finite = values[np.isfinite(values)]
        shape = (int(values.shape[0]), int(values.shape[1]), int(values.shape[2]))
        info = VolumeInfo(
            file=path,
            dataset=dataset,
            shape=shape,
            value_min=float(finite.min()) if finite.size else 0.0,
            value_max=float(finite.max()) if finite.size else 0.0,
            window=window,
            level=level,
            pixel_spacing_mm=(spacing[0], spacing[1]),
            slice_thickness_mm=thickness,
        )
        self._volumes[(path, dataset)] = info
        return info

    @staticmethod
    def read_slice(info: VolumeInfo, index: int) -> np.ndarray:
        """One slice as float32 (H, W)."""
        with h5py.File(info.file, "r") as h5:
            dataset = h5[info.dataset]
            assert isinstance(dataset, h5py.Dataset)
            return np.asarray(dataset[index], dtype=np.float32)

    @staticmethod
    def read_volume(info: VolumeInfo) -> np.ndarray:
        """The whole volume as float32 (S, H, W)."""
        with h5py.File(info.file, "r") as h5:
            dataset = h5[info.dataset]
            assert isinstance(dataset, h5py.Dataset)
            return np.asarray(dataset[()], dtype=np.float32)

    def forget(self, tenant: str, job_id: str) -> None:
        """Drop the job's cached files (after a purge)."""
        folder = self.job_dir(tenant, job_id)
        with self._guard:
            self._volumes = {k: v for k, v in self._volumes.items() if folder not in k[0].parents}
        shutil.rmtree(folder, ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        """Remove least recently used job folders until the cache fits ``max_bytes``."""
        if not self.cache_dir.is_dir():
            return
        tenants = [tenant for tenant in self.cache_dir.iterdir() if tenant.is_dir()]
        folders = [job for tenant in tenants for job in tenant.iterdir()]
        sizes = {folder: _tree_size(folder) for folder in folders}
        total = sum(sizes.values())
        for folder in sorted(folders, key=lambda p: _mtime(p)):
            if total <= self.max_bytes:
                break
            if folder == keep:
                continue
            total -= sizes[folder]
            self.forget(folder.parent.name, folder.name)


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """``count`` positive finite floats from an HDF5 attribute, or None."""
    try:
        numbers = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(n) and n > 0 for n in numbers):
        return None
    return numbers


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
