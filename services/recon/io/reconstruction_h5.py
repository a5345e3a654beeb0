"""Reconstruction output HDF5 (design.md "HDF5 output").

Datasets: ``reconstruction`` (float32 magnitude, slices x H x W), ``variance`` (same shape, only
for methods that sample), ``mask`` (the k-space mask used) and any extra maps (e.g.
``anomaly_map``, ``healthy``, ``anomaly_mask``); attributes such as ``method``, ``seed`` and
always ``research_use_only``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from services.recon.errors import InputError
from services.recon.io.atomic import atomic_output
from services.recon.io.hdf5_attrs import read_attrs, write_attrs
from services.recon.io.input_files import require_hdf5
from services.recon.io.notice import RESEARCH_USE_ONLY

RESERVED_DATASETS = ("reconstruction", "variance", "mask")


def write_reconstruction_h5(
    path: str | os.PathLike[str],
    reconstruction: np.ndarray,
    mask: np.ndarray,
    attrs: Mapping[str, Any],
    variance: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a reconstruction file atomically; refuses an existing file unless ``overwrite``.

    ``mask`` must broadcast to the reconstruction's (slices, H, W); ``variance`` must have the
    reconstruction's shape; ``None`` attribute values are left out (absent, never faked).
    """
    image = _real_finite(reconstruction, "reconstruction")
    if image.ndim != 3 or image.size == 0:
        raise InputError(f"reconstruction must be (slices, H, W); got shape {image.shape}")
    datasets: dict[str, np.ndarray] = {"reconstruction": image.astype(np.float32)}
    if variance is not None:
        spread = _real_finite(variance, "variance")
        if spread.shape != image.shape:
            raise InputError(
                f"variance shape {spread.shape} differs from reconstruction {image.shape}"
            )
        if (spread < 0).any():
            raise InputError("variance has negative values")
        datasets["variance"] = spread.astype(np.float32)
    used_mask = np.asarray(mask)
    if used_mask.ndim > 3 or not _broadcasts(used_mask.shape, image.shape):
        raise InputError(f"mask shape {used_mask.shape} does not fit reconstruction {image.shape}")
    datasets["mask"] = used_mask.astype(bool)
    for name, values in (extra or {}).items():
        if name in RESERVED_DATASETS:
            raise InputError(f"extra dataset name {name!r} is reserved")
        datasets[name] = _real_finite(values, name)
    all_attrs = {**attrs, "research_use_only": RESEARCH_USE_ONLY}
    target = Path(path)
    with atomic_output(target, overwrite) as temp, h5py.File(temp, "w") as h5:
        for name, values in datasets.items():
            h5.create_dataset(name, data=values)
        try:
            write_attrs(h5.attrs, all_attrs)
        except TypeError as error:
            raise InputError(str(error)) from error
    return target


def read_reconstruction_h5(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All top-level datasets and the attributes of a reconstruction file."""
    file = require_hdf5(path)
    with h5py.File(file, "r") as h5:
        if not isinstance(h5.get("reconstruction"), h5py.Dataset):
            raise InputError(f"{file.name}: no `reconstruction` dataset")
        datasets = {
            name: np.asarray(item[()])
            for name, item in h5.items()
            if isinstance(item, h5py.Dataset)
        }
        attrs = read_attrs(h5.attrs, drop_identifying=False)
    return datasets, attrs


def _real_finite(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if np.iscomplexobj(array) or array.dtype.kind not in "biuf":
        raise InputError(f"{name} must be real-valued; got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or inf")
    return array


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False
