"""Checks every reader makes before opening a file, so errors name the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from services.recon.errors import InputError


def require_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it is an existing, non-empty regular file; else :class:`InputError`."""
    file = Path(path)
    if not file.exists():
        raise InputError(f"{file.name}: no such file")
    if not file.is_file():
        raise InputError(f"{file.name}: not a regular file")
    if file.stat().st_size == 0:
        raise InputError(f"{file.name}: empty file")
    return file


def require_hdf5(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a non-empty HDF5 file; else :class:`InputError` naming the problem."""
    file = require_file(path)
    if not h5py.is_hdf5(file):
        raise InputError(f"{file.name}: not an HDF5 file")
    return file
