"""fastMRI-layout k-space HDF5: ``kspace`` (S, H, W) or (S, C, H, W) complex, optional ``mask``.

The layout is the one of the fastMRI data set (Zbontar et al., arXiv:1811.08839): ``kspace`` is
(slices, H, W) single-coil or (slices, coils, H, W) multi-coil, centered; ``mask`` is (W,) or
(H, W) for all slices or (slices, H, W) per slice; without ``mask``, samples that are zero in
every coil were not acquired.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from services.recon.errors import InputError
from services.recon.io.atomic import atomic_output
from services.recon.io.hdf5_attrs import read_attrs, write_attrs
from services.recon.io.input_files import require_hdf5
from services.recon.io.notice import RESEARCH_USE_ONLY
from services.recon.io.volumes import KspaceVolume


def read_fastmri_h5(path: str | os.PathLike[str]) -> KspaceVolume:
    """Read a fastMRI-layout file; samples outside the mask are set to zero.

    Raises :class:`InputError` for: not HDF5, no ``kspace`` dataset, real-valued, wrong ndim,
    empty, NaN/inf, a mask that does not fit, nothing sampled.
    """
    file = require_hdf5(path)
    name = file.name
    with h5py.File(file, "r") as h5:
        kspace = _read_kspace(h5, name)
        mask_data = _read_optional_mask(h5, name)
        attrs = read_attrs(h5.attrs)
        header_spacing = _spacing_from_ismrmrd_header(h5, kspace.shape[-2:])
    multicoil = kspace.ndim == 4
    kspace4 = kspace if multicoil else kspace[:, None]
    slices, _, height, width = kspace4.shape
    if mask_data is None:
        mask = np.any(kspace4 != 0, axis=1)
        if not mask.any():
            raise InputError(f"{name}: k-space is all zeros and there is no `mask`")
    else:
        mask = _mask_for_slices(mask_data, (slices, height, width), name)
        kspace4 = np.where(mask[:, None], kspace4, 0).astype(np.complex64)
    spacing = _spacing_from_attrs(attrs) or header_spacing
    return KspaceVolume(
        kspace=np.ascontiguousarray(kspace4, dtype=np.complex64),
        multicoil=multicoil,
        mask=mask,
        attrs=attrs,
        simulated=bool(attrs.get("simulated_kspace", False)),
        pixel_spacing_mm=spacing,
        source=name,
    )


def write_kspace_h5(
    path: str | os.PathLike[str], volume: KspaceVolume, overwrite: bool = False
) -> Path:
    """Write ``volume`` in the fastMRI layout (atomic; refuses to overwrite unless asked).

    Single-coil volumes are stored as (S, H, W); the mask in its most compact exact form
    ((W,), (H, W) or (S, H, W)). Attributes: the volume's, plus ``simulated_kspace``,
    ``pixel_spacing_mm`` and ``research_use_only``.
    """
    kspace = np.asarray(volume.kspace)
    if kspace.ndim != 4 or not np.iscomplexobj(kspace):
        raise InputError(f"kspace must be complex (slices, coils, H, W); got {kspace.shape}")
    slices, coils, height, width = kspace.shape
    if not volume.multicoil and coils != 1:
        raise InputError(f"single-coil volume has {coils} coils")
    mask = np.asarray(volume.mask, dtype=bool)
    if mask.shape != (slices, height, width):
        raise InputError(f"mask shape {mask.shape} does not fit k-space {kspace.shape}")
    attrs: dict[str, Any] = {
        **volume.attrs,
        "simulated_kspace": bool(volume.simulated),
        "pixel_spacing_mm": list(volume.pixel_spacing_mm) if volume.pixel_spacing_mm else None,
        "research_use_only": RESEARCH_USE_ONLY,
    }
    stored = kspace if volume.multicoil else kspace[:, 0]
    target = Path(path)
    with atomic_output(target, overwrite) as temp, h5py.File(temp, "w") as h5:
        h5.create_dataset("kspace", data=stored.astype(np.complex64))
        h5.create_dataset("mask", data=_compact_mask(mask))
        try:
            write_attrs(h5.attrs, attrs)
        except TypeError as error:
            raise InputError(str(error)) from error
    return target


def _read_kspace(h5: h5py.File, name: str) -> np.ndarray:
    if "kspace" not in h5 or not isinstance(h5["kspace"], h5py.Dataset):
        raise InputError(f"{name}: no `kspace` dataset (fastMRI layout expected)")
    dataset = h5["kspace"]
    if dataset.ndim not in (3, 4):
        raise InputError(
            f"{name}: `kspace` must be (slices, H, W) or (slices, coils, H, W); "
            f"got shape {dataset.shape}"
        )
    if dataset.size == 0:
        raise InputError(f"{name}: `kspace` is empty (shape {dataset.shape})")
    kspace = _as_complex(dataset, name)
    if not np.isfinite(kspace).all():
        raise InputError(f"{name}: `kspace` contains NaN or inf")
    return kspace


def _as_complex(dataset: h5py.Dataset, name: str) -> np.ndarray:
    dtype = dataset.dtype
    if dtype.kind == "c":
        return np.asarray(dataset[()]).astype(np.complex64)
    fields = dtype.names or ()
    for real, imag in (("real", "imag"), ("r", "i")):
        if real in fields and imag in fields:
            raw = dataset[()]
            return (raw[real] + 1j * raw[imag]).astype(np.complex64)
    if dtype.kind in "fiub":
        raise InputError(f"{name}: `kspace` is real-valued ({dtype}); complex k-space expected")
    raise InputError(f"{name}: `kspace` has unsupported dtype {dtype}")


def _read_optional_mask(h5: h5py.File, name: str) -> np.ndarray | None:
    if "mask" not in h5:
        return None
    if not isinstance(h5["mask"], h5py.Dataset):
        raise InputError(f"{name}: `mask` is not a dataset")
    mask = np.asarray(h5["mask"][()])
    if mask.dtype.kind not in "biuf":
        raise InputError(f"{name}: `mask` has unsupported dtype {mask.dtype}")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise InputError(f"{name}: `mask` contains NaN or inf")
    return mask != 0


def _mask_for_slices(mask: np.ndarray, shape: tuple[int, int, int], name: str) -> np.ndarray:
    slices, height, width = shape
    fits = {1: (width,), 2: (height, width), 3: (slices, height, width)}
    if fits.get(mask.ndim) != mask.shape:
        raise InputError(
            f"{name}: `mask` shape {mask.shape} does not fit k-space (slices, H, W) = {shape}; "
            "expected (W,), (H, W) or (slices, H, W)"
        )
    full = np.broadcast_to(mask, shape).copy()
    if not full.any():
        raise InputError(f"{name}: `mask` selects no k-space samples")
    return full


def _compact_mask(mask: np.ndarray) -> np.ndarray:
    """The smallest of (W,), (H, W), (S, H, W) that broadcasts back to ``mask`` exactly."""
    if (mask == mask[:1]).all():
        plane = mask[0]
        if (plane == plane[:1]).all():
            return plane[0]
        return plane
    return mask


def _spacing_from_attrs(attrs: dict[str, Any]) -> tuple[float, float] | None:
    value = attrs.get("pixel_spacing_mm")
    if isinstance(value, list) and len(value) == 2:
        row, column = (float(item) for item in value)
        if row > 0 and column > 0:
            return (row, column)
    return None


def _spacing_from_ismrmrd_header(
    h5: h5py.File, plane_shape: tuple[int, ...]
) -> tuple[float, float] | None:
    """Pixel spacing from a fastMRI file's ``ismrmrd_header`` (encoded space FOV / matrix)."""
    if "ismrmrd_header" not in h5:
        return None
    from ismrmrd.xsd import CreateFromDocument

    try:
        raw = h5["ismrmrd_header"][()]
        header = CreateFromDocument(raw.decode() if isinstance(raw, bytes) else str(raw))
        encoded = header.encoding[0].encodedSpace
    except Exception:  # an optional header that does not parse only costs the spacing
        return None
    matrix, fov = encoded.matrixSize, encoded.fieldOfView_mm
    if (matrix.x, matrix.y) != tuple(plane_shape) or fov.x <= 0 or fov.y <= 0:
        return None
    return (float(fov.x) / matrix.x, float(fov.y) / matrix.y)
